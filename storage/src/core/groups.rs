//! The writer's side of groups: changes checked against the member's role and applied with their
//! GROUP_EVENT in one batch, group messages under write or read diffusion, and the switch
//! between the two as the member count crosses [`GroupLimits::write_diffusion_max`].
//!
//! # Cache
//! The writer applies every change to a group, so it keeps each group it touched in memory
//! (metadata, members, and their cursors once loaded) and the cache cannot be stale: an append
//! checks membership and mute without reading a row. A group missing from the cache whose rows
//! a batch in flight changed asks for a barrier before it is loaded.
//!
//! # Diffusion
//! Write diffusion (small groups): every entry gets an inbox entry and a recent-row update per
//! member, as a one-to-one message does per participant. Read diffusion (large groups): the
//! entry is stored once, flagged [`MessageFlags::READ_DIFFUSED`], plus its dedup row and the
//! sender's cursor (its read position moves to the message): three rows whatever the member
//! count. Members' unread counts then come from cursors (group seq minus read seq) on read.
//!
//! A switch happens inside the membership change that crosses the limit, before its event is
//! appended, so every entry is stored under exactly one mode: write diffusion to read moves
//! each member's read position into their cursor (and their unread out of their totals); read
//! to write diffusion turns each cursor back into a recent row and records the last
//! read-diffused seq in `read_until`, so SYNC still serves the read-diffused entries to devices
//! that had not fetched them. Both are a write per member, once per crossing.

use std::collections::BTreeMap;
use std::mem;
use std::sync::Arc;

use crate::engine::{Cf, EngineError, KvEngine};
use crate::error::OpError;
use crate::ids::{ConvKey, DeviceId, GroupId, MessageFlags, MessageKind, Seq, UserId};
use crate::keys;
use crate::read;
use crate::records::{
    access, ArchivedCursorRecord, ArchivedGroupRecord, CursorRecord, DedupRecordRef, GroupRecord,
    MemberOfRecord, MemberRecord, MessageRecordRef,
};
use crate::types::{
    Diffusion, GroupAppendResult, GroupEventKind, GroupFanout, GroupInfo, GroupLimits,
    GroupMessage, GroupOp, GroupOutcome, GroupRequest, MarkRead, MemberRole, ReadState,
    StoredMessage,
};

use super::{done, Applied, PendingAppend, RecentState, Reply, WriteCmd, WriterCore};

/// A cached group.
#[derive(Debug, Clone)]
pub(super) struct GroupState {
    pub(super) rec: GroupRecord,
    pub(super) members: BTreeMap<UserId, MemberState>,
    /// The member ids, built when a read-diffused entry needs them and dropped on any change.
    list: Option<Arc<[UserId]>>,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct MemberState {
    pub(super) role: MemberRole,
    muted_until_ms: u64,
    joined_ms: u64,
    /// Loaded on first use.
    cursor: Option<CursorState>,
}

#[derive(Debug, Clone, Copy, Default)]
pub(super) struct CursorState {
    pub(super) acked: u64,
    pub(super) read: u64,
    pub(super) since: u64,
}

/// Encodes a GROUP_EVENT body (SPEC.md, Groups): `kind u8 · users list<string> · arg varint`.
pub(crate) fn event_body(kind: GroupEventKind, users: &[UserId], arg: u64) -> Vec<u8> {
    use tern_protocol::wire::put_varint;
    let mut b = Vec::with_capacity(16 + users.len() * 12);
    b.push(kind.0);
    put_varint(&mut b, users.len() as u64);
    for u in users {
        put_varint(&mut b, u.as_str().len() as u64);
        b.extend_from_slice(u.as_str().as_bytes());
    }
    put_varint(&mut b, arg);
    b
}

pub(super) fn group_conv(group: &GroupId) -> Vec<u8> {
    let mut conv = Vec::new();
    keys::conv_prefix(&mut conv, &ConvKey::Group(group.clone()));
    conv
}

fn info_of(id: &GroupId, rec: &GroupRecord) -> Result<GroupInfo, OpError> {
    Ok(GroupInfo {
        id: id.clone(),
        name: rec.name.clone(),
        announcement: rec.announcement.clone(),
        avatar: rec.avatar.clone(),
        owner: UserId::new(rec.owner.as_str()).map_err(|e| crate::records::bad(Cf::Groups, e))?,
        settings: rec.settings,
        diffusion: Diffusion(rec.diffusion),
        member_count: rec.member_count,
        created_ms: rec.created_ms,
        updated_ms: rec.updated_ms,
    })
}

/// One timeline entry to append.
pub(super) struct Entry<'a> {
    pub(super) sender: &'a UserId,
    pub(super) sender_device: &'a DeviceId,
    pub(super) client_msg_id: [u8; 16],
    pub(super) kind: MessageKind,
    pub(super) body: Vec<u8>,
    /// Members whose mention flag the entry raises (members only, never the sender).
    pub(super) mentioned: Mentioned<'a>,
}

/// Whom an entry mentions.
#[derive(Clone, Copy)]
pub(super) enum Mentioned<'a> {
    Nobody,
    Some(&'a [UserId]),
    All,
}

impl Mentioned<'_> {
    fn includes(&self, user: &UserId) -> bool {
        match self {
            Mentioned::Nobody => false,
            Mentioned::Some(users) => users.contains(user),
            Mentioned::All => true,
        }
    }
}

/// The `cursors` key of a read-diffusion group's @all mark: `id(group) ‖ 00`. A zero byte
/// never starts an `id` (ids are at least one byte long), so no member key collides with it.
pub(crate) fn mention_all_key(out: &mut Vec<u8>, group: &GroupId) {
    keys::group_key(out, group);
    out.push(0);
}

/// The `cursors` key of a member's mention mark in a read-diffusion group:
/// `id(group) ‖ id(user) ‖ 00` (a device key has an `id` where the zero byte is).
pub(crate) fn mention_key(out: &mut Vec<u8>, group: &GroupId, user: &UserId) {
    keys::member_key(out, group, user);
    out.push(0);
}

impl GroupAppendResult {
    /// The answer to a retransmission: what the original was given, nothing written.
    pub(super) fn repeated(e: super::Earlier) -> GroupAppendResult {
        GroupAppendResult {
            conv_seq: e.conv_seq,
            sender_inbox_seq: e.sender_inbox_seq,
            time_ms: e.time_ms,
            duplicate: true,
            fanout: None,
        }
    }
}

impl<E: KvEngine> WriterCore<E> {
    /// Applies a group command (see `WriterCore::apply`).
    pub(super) fn apply_group(&mut self, cmd: WriteCmd) -> Applied {
        Applied::Queued(match cmd {
            WriteCmd::Group(req, tx) => {
                if self.group_in_flight(&req.group) {
                    return Applied::Barrier(WriteCmd::Group(req, tx));
                }
                let limits = self.config.group_limits(&req.group);
                let r = self.group_op(req, limits);
                done(tx, r)
            }
            WriteCmd::AppendGroup(msg, tx) => {
                if self.group_in_flight(&msg.group) {
                    return Applied::Barrier(WriteCmd::AppendGroup(msg, tx));
                }
                let r = self.append_group(msg);
                done(tx, r)
            }
            WriteCmd::RecallGroup(req, tx) => {
                let ConvKey::Group(group) = &req.conv else {
                    return Applied::Barrier(WriteCmd::RecallGroup(req, tx));
                };
                // The recalled message's row is read: it must be durable.
                if self.group_in_flight(group) || self.conv_dirty(&req.conv) {
                    return Applied::Barrier(WriteCmd::RecallGroup(req, tx));
                }
                let r = self.recall_group(req);
                done(tx, r)
            }
            WriteCmd::GroupPositions(user, device, positions, tx) => {
                if self.group_positions_in_flight(&user, &device, &positions) {
                    return Applied::Barrier(WriteCmd::GroupPositions(user, device, positions, tx));
                }
                let r = self.put_group_positions(&user, &device, &positions);
                done(tx, r)
            }
            // `apply` routes only the four above here.
            other => return Applied::Barrier(other),
        })
    }

    /// Applies a READ of a group conversation: the cursor under read diffusion, the recent row
    /// (as for one-to-one) under write diffusion.
    pub(super) fn apply_group_read(&mut self, req: MarkRead, tx: Reply<ReadState>) -> Applied {
        let ConvKey::Group(group) = req.conv.clone() else {
            return Applied::Barrier(WriteCmd::MarkRead(req, tx));
        };
        if self.group_in_flight(&group) {
            return Applied::Barrier(WriteCmd::MarkRead(req, tx));
        }
        Applied::Queued(match self.mark_group_read(&req, &group) {
            Ok(Some(state)) => done(tx, Ok(state)),
            Err(e) => done(tx, Err(e)),
            Ok(None) => match self.mark_read_needs_barrier(&req) {
                Ok(true) => return Applied::Barrier(WriteCmd::MarkRead(req, tx)),
                Ok(false) => {
                    let r = self.mark_read(req);
                    done(tx, r)
                }
                Err(e) => done(tx, Err(e.into())),
            },
        })
    }

    /// Whether an operation on `group` must wait for a barrier: the group is not cached and a
    /// batch in flight changed its rows.
    pub(super) fn group_in_flight(&mut self, group: &GroupId) -> bool {
        if self.groups.contains_key(group) {
            return false;
        }
        keys::group_key(&mut self.k1, group);
        self.is_touched(Cf::Groups, 1)
    }

    /// Drops a cached group (a legacy single-row operation changed it behind the cache).
    pub(super) fn forget_group(&mut self, group: &GroupId) {
        self.groups.remove(group);
    }

    pub(super) fn touch_group(&mut self, group: &GroupId) {
        let mut key = Vec::new();
        keys::group_key(&mut key, group);
        self.touch(Cf::Groups, &key);
    }

    /// Loads `group` into the cache; false if it does not exist.
    pub(super) fn load_group_state(&mut self, group: &GroupId) -> Result<bool, EngineError> {
        if self.groups.contains_key(group) {
            return Ok(true);
        }
        let mut key = Vec::new();
        keys::group_key(&mut key, group);
        let rec = self
            .engine
            .get_with(Cf::Groups, &key, |v| -> Result<GroupRecord, EngineError> {
                let r = access::<ArchivedGroupRecord>(Cf::Groups, v)?;
                Ok(GroupRecord {
                    name: r.name.as_str().to_owned(),
                    announcement: r.announcement.as_str().to_owned(),
                    avatar: r.avatar.as_str().to_owned(),
                    owner: r.owner.as_str().to_owned(),
                    settings: r.settings.to_native(),
                    diffusion: r.diffusion,
                    member_count: r.member_count.to_native(),
                    created_ms: r.created_ms.to_native(),
                    updated_ms: r.updated_ms.to_native(),
                    mode_since: r.mode_since.to_native(),
                    read_until: r.read_until.to_native(),
                })
            })?
            .transpose()?;
        let Some(rec) = rec else {
            return Ok(false);
        };
        let mut members = BTreeMap::new();
        for m in read::members(&*self.engine, group)? {
            members.insert(
                m.user,
                MemberState {
                    role: m.role,
                    muted_until_ms: m.muted_until_ms,
                    joined_ms: m.joined_ms,
                    cursor: None,
                },
            );
        }
        self.groups.insert(
            group.clone(),
            GroupState {
                rec,
                members,
                list: None,
            },
        );
        Ok(true)
    }

    /// The cursor of a member of a cached group, loaded on first use.
    /// The seq of the last read-diffused message that mentions `user` by name or as everyone
    /// (@all), from the stored marks; zero when none does.
    fn stored_mention_mark(&self, group: &GroupId, user: &UserId) -> Result<u64, EngineError> {
        let mut key = Vec::new();
        let mut mark = 0;
        for own in [true, false] {
            if own {
                mention_key(&mut key, group, user);
            } else {
                mention_all_key(&mut key, group);
            }
            let seq = self
                .engine
                .get_with(Cf::Cursors, &key, |v| {
                    access::<ArchivedCursorRecord>(Cf::Cursors, v).map(|r| r.acked.to_native())
                })?
                .transpose()?
                .unwrap_or(0);
            mark = mark.max(seq);
        }
        Ok(mark)
    }

    pub(super) fn member_cursor(
        &mut self,
        group: &GroupId,
        user: &UserId,
    ) -> Result<CursorState, EngineError> {
        if let Some(c) = self
            .groups
            .get(group)
            .and_then(|g| g.members.get(user))
            .and_then(|m| m.cursor)
        {
            return Ok(c);
        }
        let mut key = Vec::new();
        keys::member_key(&mut key, group, user);
        let c = self
            .engine
            .get_with(Cf::Cursors, &key, |v| {
                access::<ArchivedCursorRecord>(Cf::Cursors, v).map(|r| CursorState {
                    acked: r.acked.to_native(),
                    read: r.read.to_native(),
                    since: r.since.to_native(),
                })
            })?
            .transpose()?
            .unwrap_or_default();
        if let Some(m) = self
            .groups
            .get_mut(group)
            .and_then(|g| g.members.get_mut(user))
        {
            m.cursor = Some(c);
        }
        Ok(c)
    }

    pub(super) fn put_cursor_row(
        &mut self,
        group: &GroupId,
        user: &UserId,
        c: CursorState,
    ) -> Result<(), OpError> {
        let mut key = Vec::new();
        keys::member_key(&mut key, group, user);
        let rec = CursorRecord {
            acked: c.acked,
            read: c.read,
            updated_ms: self.now,
            since: c.since,
        };
        self.put(Cf::Cursors, &key, &rec)?;
        if let Some(m) = self
            .groups
            .get_mut(group)
            .and_then(|g| g.members.get_mut(user))
        {
            m.cursor = Some(c);
        }
        Ok(())
    }

    fn put_member_rows(&mut self, group: &GroupId, user: &UserId) -> Result<(), OpError> {
        let Some(m) = self
            .groups
            .get(group)
            .and_then(|g| g.members.get(user))
            .copied()
        else {
            return Ok(());
        };
        let mut key = Vec::new();
        keys::member_key(&mut key, group, user);
        self.put(
            Cf::Members,
            &key,
            &MemberRecord {
                role: m.role.0,
                muted_until_ms: m.muted_until_ms,
                joined_ms: m.joined_ms,
            },
        )?;
        keys::member_of_key(&mut key, user, group);
        self.put(
            Cf::MemberOf,
            &key,
            &MemberOfRecord {
                role: m.role.0,
                joined_ms: m.joined_ms,
            },
        )
    }

    fn delete_member_rows(&mut self, group: &GroupId, user: &UserId) {
        let mut key = Vec::new();
        keys::member_key(&mut key, group, user);
        self.batch.delete(Cf::Members, &key);
        self.batch.delete(Cf::Cursors, &key);
        key.push(0);
        self.batch.delete(Cf::Cursors, &key);
        keys::member_of_key(&mut key, user, group);
        self.batch.delete(Cf::MemberOf, &key);
    }

    fn put_group_row(&mut self, group: &GroupId) -> Result<(), OpError> {
        let Some(g) = self.groups.get_mut(group) else {
            return Ok(());
        };
        g.rec.member_count = g.members.len() as u32;
        g.list = None;
        let rec = g.rec.clone();
        let mut key = Vec::new();
        keys::group_key(&mut key, group);
        self.put(Cf::Groups, &key, &rec)
    }

    /// Appends one entry to a cached group's timeline under its current diffusion, reaching
    /// the current members plus `also` (members just removed, who see their removal). Events
    /// never count as unread; content counts for everyone but its sender.
    pub(super) fn append_entry(
        &mut self,
        group: &GroupId,
        conv_bytes: &[u8],
        entry: Entry<'_>,
        also: &[UserId],
    ) -> Result<(GroupFanout, Seq), OpError> {
        let (diffusion, mut recipients) = {
            let Some(g) = self.groups.get(group) else {
                return Err(OpError::NotFound("group"));
            };
            (
                Diffusion(g.rec.diffusion),
                g.members.keys().cloned().collect::<Vec<_>>(),
            )
        };
        for u in also {
            if !recipients.contains(u) {
                recipients.push(u.clone());
            }
        }
        let c = self.conv_slot(conv_bytes).map_err(|e| self.poison(e))?;
        let counts = !entry.kind.is_event();

        // Loads before the first change to the batch.
        struct Target {
            user: UserId,
            u: u32,
            last: Seq,
            recent: u32,
            total: u64,
        }
        let mut targets = Vec::new();
        if diffusion == Diffusion::WRITE {
            let mut key = Vec::new();
            let conv = ConvKey::Group(group.clone());
            targets.reserve(recipients.len());
            for user in &recipients {
                keys::user_key(&mut key, user);
                let u = self.user_slot(&key);
                let last = self.inbox_last(u).map_err(|e| self.poison(e))?;
                let total = self.total(u).map_err(|e| self.poison(e))?;
                keys::recent_key(&mut key, user, &conv);
                let recent = self.recent_slot(&key).map_err(|e| self.poison(e))?;
                targets.push(Target {
                    user: user.clone(),
                    u,
                    last,
                    recent,
                    total,
                });
            }
        }

        let now = self.now;
        let seq = self.convs.get(c).last.next();
        self.set_conv_last(c, seq);
        let flags = if diffusion == Diffusion::READ {
            MessageFlags::READ_DIFFUSED
        } else {
            MessageFlags::NONE
        };
        let mut key = Vec::with_capacity(conv_bytes.len() + 8);
        key.extend_from_slice(conv_bytes);
        keys::put_seq(&mut key, seq);
        let row = MessageRecordRef {
            sender: entry.sender.as_str(),
            sender_device: entry.sender_device.as_str(),
            client_msg_id: entry.client_msg_id,
            time_ms: now,
            kind: entry.kind.0,
            flags: flags.0,
            body: &entry.body,
        };
        self.put(Cf::Messages, &key, &row)?;

        let mut inboxes = Vec::with_capacity(targets.len());
        let mut sender_inbox = Seq::ZERO;
        for t in targets {
            let inbox_seq = self.push_inbox(t.u, t.last, conv_bytes, seq)?;
            let mut state: RecentState = self.recent(t.recent).unwrap_or_default();
            state.last_seq = seq;
            state.last_time_ms = now;
            state.updated_ms = now;
            let mine = t.user == *entry.sender;
            if counts && !mine {
                state.unread = state.unread.saturating_add(1);
                self.set_total(t.u, t.total + 1);
                if entry.mentioned.includes(&t.user) {
                    state.mentioned = true;
                }
            }
            self.set_recent(t.recent, state);
            if mine {
                sender_inbox = inbox_seq;
            }
            inboxes.push((t.user, inbox_seq));
        }
        let members = if diffusion == Diffusion::READ {
            let g = self.groups.get_mut(group);
            match g {
                Some(g) if also.is_empty() => g
                    .list
                    .get_or_insert_with(|| g.members.keys().cloned().collect())
                    .clone(),
                _ => recipients.into(),
            }
        } else {
            Arc::from(Vec::new())
        };
        let message = StoredMessage {
            conv: ConvKey::Group(group.clone()),
            seq,
            sender: entry.sender.clone(),
            sender_device: entry.sender_device.clone(),
            client_msg_id: crate::ids::ClientMsgId(entry.client_msg_id),
            time_ms: now,
            kind: entry.kind,
            flags: MessageFlags::NONE,
            body: entry.body,
        };
        Ok((
            GroupFanout {
                message,
                diffusion,
                inboxes,
                members,
            },
            sender_inbox,
        ))
    }

    /// Switches a cached group's diffusion if its member count crossed the limit; `next` is
    /// the seq the first entry under the new mode will get.
    fn rebalance(
        &mut self,
        group: &GroupId,
        conv_bytes: &[u8],
        limits: GroupLimits,
    ) -> Result<(), OpError> {
        let Some(g) = self.groups.get(group) else {
            return Ok(());
        };
        let count = g.members.len() as u32;
        let mode = Diffusion(g.rec.diffusion);
        let want = if count > limits.write_diffusion_max {
            Diffusion::READ
        } else {
            Diffusion::WRITE
        };
        if want == mode {
            return Ok(());
        }
        let users: Vec<UserId> = g.members.keys().cloned().collect();
        let c = self.conv_slot(conv_bytes).map_err(|e| self.poison(e))?;
        let last = self.convs.get(c).last;
        let conv = ConvKey::Group(group.clone());
        let mut key = Vec::new();
        for user in &users {
            let cursor = self
                .member_cursor(group, user)
                .map_err(|e| self.poison(e))?;
            keys::user_key(&mut key, user);
            let u = self.user_slot(&key);
            let total = self.total(u).map_err(|e| self.poison(e))?;
            keys::recent_key(&mut key, user, &conv);
            let r = self.recent_slot(&key).map_err(|e| self.poison(e))?;
            let mut state = self.recent(r).unwrap_or_default();
            if want == Diffusion::READ {
                // The recent row's read position moves into the cursor; its unread leaves the
                // stored totals (read-diffused unread is computed from cursors).
                let read = cursor.read.max(state.read_seq.0);
                self.put_cursor_row(
                    group,
                    user,
                    CursorState {
                        acked: cursor.acked.max(last.0),
                        read,
                        since: cursor.since,
                    },
                )?;
                self.set_total(u, total.saturating_sub(u64::from(state.unread)));
                if state.mentioned && last.0 > read {
                    // The flag becomes a mark at the last seq: up until the member reads
                    // everything stored under write diffusion.
                    let mut mark = Vec::new();
                    mention_key(&mut mark, group, user);
                    let rec = CursorRecord {
                        acked: last.0,
                        read: 0,
                        updated_ms: self.now,
                        since: 0,
                    };
                    self.put(Cf::Cursors, &mark, &rec)?;
                }
                state.mentioned = false;
                state.unread = 0;
                state.read_seq = Seq(read);
                state.updated_ms = self.now;
                self.set_recent(r, state);
            } else {
                let read = cursor.read.max(state.read_seq.0).min(last.0);
                let unread = u32::try_from(last.0 - read).unwrap_or(u32::MAX);
                // A mention past the read position (the member's mark or the group's @all
                // mark) becomes the recent row's flag, as the flag became a mark the other way.
                let mark = self
                    .stored_mention_mark(group, user)
                    .map_err(|e| self.poison(e))?;
                // (A mark from before the member joined does not count.)
                state.mentioned = mark > read.max(cursor.since);
                state.read_seq = Seq(read);
                state.unread = unread;
                state.last_seq = last;
                state.last_time_ms = state.last_time_ms.max(1);
                state.updated_ms = self.now;
                self.set_recent(r, state);
                self.set_total(u, total + u64::from(unread));
            }
        }
        let next = last.next();
        if let Some(g) = self.groups.get_mut(group) {
            if want == Diffusion::WRITE {
                g.rec.read_until = last.0;
            }
            g.rec.diffusion = want.0;
            g.rec.mode_since = next.0;
        }
        Ok(())
    }

    /// Applies a group change with its checks; see [`GroupOp`] for who may do what.
    pub(super) fn group_op(
        &mut self,
        req: GroupRequest,
        limits: GroupLimits,
    ) -> Result<GroupOutcome, OpError> {
        let GroupRequest {
            group,
            by,
            by_device,
            op,
        } = req;
        let conv_bytes = group_conv(&group);
        let exists = self.load_group_state(&group).map_err(|e| self.poison(e))?;
        if let GroupOp::Create { name, members } = op {
            if exists {
                return Err(OpError::Invalid("the group exists already"));
            }
            let mut users: Vec<UserId> = Vec::new();
            for u in members {
                if u != by && !users.contains(&u) {
                    users.push(u);
                }
            }
            if users.len() as u64 + 1 > u64::from(limits.max_members) {
                return Err(OpError::LimitExceeded("too many members"));
            }
            // Seqs continue after whatever the conversation held (a group id is never reused
            // by the node, but seqs must never be).
            let c = self.conv_slot(&conv_bytes).map_err(|e| self.poison(e))?;
            let last = self.convs.get(c).last;
            let now = self.now;
            let mut state = GroupState {
                rec: GroupRecord {
                    name,
                    announcement: String::new(),
                    avatar: String::new(),
                    owner: by.as_str().to_owned(),
                    settings: 0,
                    diffusion: Diffusion::WRITE.0,
                    member_count: 0,
                    created_ms: now,
                    updated_ms: now,
                    mode_since: last.next().0,
                    read_until: 0,
                },
                members: BTreeMap::new(),
                list: None,
            };
            let cursor = CursorState {
                acked: last.0,
                read: last.next().0,
                since: last.0,
            };
            for (u, role) in std::iter::once((&by, MemberRole::OWNER))
                .chain(users.iter().map(|u| (u, MemberRole::MEMBER)))
            {
                state.members.insert(
                    u.clone(),
                    MemberState {
                        role,
                        muted_until_ms: 0,
                        joined_ms: now,
                        cursor: Some(cursor),
                    },
                );
            }
            if state.members.len() as u32 > limits.write_diffusion_max {
                state.rec.diffusion = Diffusion::READ.0;
            }
            self.groups.insert(group.clone(), state);
            let all: Vec<UserId> = std::iter::once(by.clone())
                .chain(users.iter().cloned())
                .collect();
            for u in &all {
                self.put_member_rows(&group, u)?;
                self.put_cursor_row(&group, u, cursor)?;
            }
            self.put_group_row(&group)?;
            self.touch_group(&group);
            let body = event_body(GroupEventKind::CREATED, &users, 0);
            return self.finish_change(&group, &conv_bytes, &by, &by_device, body, &[]);
        }
        if !exists {
            return Err(OpError::NotFound("group"));
        }
        let Some(me) = self
            .groups
            .get(&group)
            .and_then(|g| g.members.get(&by))
            .copied()
        else {
            return Err(OpError::NotAllowed("not a member of the group"));
        };
        let is_owner = me.role == MemberRole::OWNER;
        let is_admin = is_owner || me.role == MemberRole::ADMIN;
        let member = |core: &Self, u: &UserId| {
            core.groups
                .get(&group)
                .and_then(|g| g.members.get(u))
                .copied()
        };
        // Every target of a member operation must be a member; admins act on members only.
        let targets = |core: &Self, users: &[UserId], admin_rule: bool| -> Result<(), OpError> {
            if users.is_empty() {
                return Err(OpError::Invalid("no users named"));
            }
            for u in users {
                let Some(m) = member(core, u) else {
                    return Err(OpError::NotFound("member"));
                };
                if m.role == MemberRole::OWNER {
                    return Err(OpError::NotAllowed("the owner cannot be the target"));
                }
                if admin_rule && !is_owner && m.role == MemberRole::ADMIN {
                    return Err(OpError::NotAllowed("only the owner acts on admins"));
                }
            }
            Ok(())
        };
        let now = self.now;
        let mut removed: Vec<UserId> = Vec::new();
        let body = match op {
            GroupOp::Create { .. } => return Err(OpError::Invalid("unreachable")),
            GroupOp::Update {
                name,
                announcement,
                avatar,
            } => {
                if !is_admin {
                    return Err(OpError::NotAllowed(
                        "only the owner and admins update a group",
                    ));
                }
                let Some(g) = self.groups.get_mut(&group) else {
                    return Err(OpError::NotFound("group"));
                };
                let mut changed = 0u64;
                for (bit, new, field) in [
                    (1, name, &mut g.rec.name),
                    (2, announcement, &mut g.rec.announcement),
                    (4, avatar, &mut g.rec.avatar),
                ] {
                    if let Some(v) = new {
                        if *field != v {
                            *field = v;
                            changed |= bit;
                        }
                    }
                }
                if changed == 0 {
                    return self.unchanged(&group);
                }
                g.rec.updated_ms = now;
                self.put_group_row(&group)?;
                event_body(GroupEventKind::UPDATED, &[], changed)
            }
            GroupOp::Add(users) => {
                if !is_admin {
                    return Err(OpError::NotAllowed("only the owner and admins add members"));
                }
                if users.is_empty() {
                    return Err(OpError::Invalid("no users named"));
                }
                let mut new: Vec<UserId> = Vec::new();
                for u in users {
                    if member(self, &u).is_none() && !new.contains(&u) {
                        new.push(u);
                    }
                }
                if new.is_empty() {
                    return self.unchanged(&group);
                }
                let count = self.groups.get(&group).map_or(0, |g| g.members.len());
                if (count + new.len()) as u64 > u64::from(limits.max_members) {
                    return Err(OpError::LimitExceeded(
                        "the group would exceed its member limit",
                    ));
                }
                let c = self.conv_slot(&conv_bytes).map_err(|e| self.poison(e))?;
                let last = self.convs.get(c).last;
                for u in &new {
                    if let Some(g) = self.groups.get_mut(&group) {
                        g.members.insert(
                            u.clone(),
                            MemberState {
                                role: MemberRole::MEMBER,
                                muted_until_ms: 0,
                                joined_ms: now,
                                cursor: None,
                            },
                        );
                    }
                    self.put_member_rows(&group, u)?;
                    // Starts after everything before the join; the join event (the next seq:
                    // a rebalance appends nothing) is read.
                    self.put_cursor_row(
                        &group,
                        u,
                        CursorState {
                            acked: last.0,
                            read: last.next().0,
                            since: last.0,
                        },
                    )?;
                }
                event_body(GroupEventKind::ADDED, &new, 0)
            }
            GroupOp::Remove(users) => {
                if !is_admin {
                    return Err(OpError::NotAllowed(
                        "only the owner and admins remove members",
                    ));
                }
                if users.contains(&by) {
                    return Err(OpError::Invalid("use leave to leave a group"));
                }
                targets(self, &users, true)?;
                for u in &users {
                    if let Some(g) = self.groups.get_mut(&group) {
                        if g.members.remove(u).is_some() {
                            removed.push(u.clone());
                        }
                    }
                }
                for u in &removed {
                    self.delete_member_rows(&group, u);
                }
                event_body(GroupEventKind::REMOVED, &removed, 0)
            }
            GroupOp::Mute { users, until_ms } => {
                if !is_admin {
                    return Err(OpError::NotAllowed(
                        "only the owner and admins mute members",
                    ));
                }
                targets(self, &users, true)?;
                self.set_members(&group, &users, |m| m.muted_until_ms = until_ms)?;
                event_body(GroupEventKind::MUTED, &users, until_ms)
            }
            GroupOp::Unmute(users) => {
                if !is_admin {
                    return Err(OpError::NotAllowed(
                        "only the owner and admins unmute members",
                    ));
                }
                targets(self, &users, true)?;
                self.set_members(&group, &users, |m| m.muted_until_ms = 0)?;
                event_body(GroupEventKind::UNMUTED, &users, 0)
            }
            GroupOp::SetRole { users, role } => {
                if !is_owner {
                    return Err(OpError::NotAllowed("only the owner sets roles"));
                }
                if role != MemberRole::MEMBER && role != MemberRole::ADMIN {
                    return Err(OpError::Invalid("role must be MEMBER or ADMIN"));
                }
                targets(self, &users, false)?;
                self.set_members(&group, &users, |m| m.role = role)?;
                event_body(GroupEventKind::ROLE_SET, &users, u64::from(role.0))
            }
            GroupOp::Leave => {
                if is_owner {
                    return Err(OpError::NotAllowed(
                        "the owner transfers ownership or disbands instead of leaving",
                    ));
                }
                if let Some(g) = self.groups.get_mut(&group) {
                    g.members.remove(&by);
                }
                self.delete_member_rows(&group, &by);
                removed.push(by.clone());
                event_body(GroupEventKind::LEFT, std::slice::from_ref(&by), 0)
            }
            GroupOp::Transfer(to) => {
                if !is_owner {
                    return Err(OpError::NotAllowed("only the owner transfers ownership"));
                }
                if to == by {
                    return Err(OpError::Invalid("the owner already owns the group"));
                }
                if member(self, &to).is_none() {
                    return Err(OpError::NotFound("member"));
                }
                self.set_members(&group, std::slice::from_ref(&to), |m| {
                    m.role = MemberRole::OWNER
                })?;
                self.set_members(&group, std::slice::from_ref(&by), |m| {
                    m.role = MemberRole::ADMIN
                })?;
                if let Some(g) = self.groups.get_mut(&group) {
                    g.rec.owner = to.as_str().to_owned();
                    g.rec.updated_ms = now;
                }
                event_body(GroupEventKind::TRANSFERRED, std::slice::from_ref(&to), 0)
            }
            GroupOp::Disband => {
                if !is_owner {
                    return Err(OpError::NotAllowed("only the owner disbands the group"));
                }
                let info = self.cached_info(&group)?;
                let everyone: Vec<UserId> = self
                    .groups
                    .get(&group)
                    .map(|g| g.members.keys().cloned().collect())
                    .unwrap_or_default();
                let body = event_body(GroupEventKind::DISBANDED, &[], 0);
                let entry = Entry {
                    sender: &by,
                    sender_device: &by_device,
                    client_msg_id: [0; 16],
                    kind: MessageKind::GROUP_EVENT,
                    body,
                    mentioned: Mentioned::Nobody,
                };
                let (event, _) = self.append_entry(&group, &conv_bytes, entry, &[])?;
                for u in &everyone {
                    self.delete_member_rows(&group, u);
                }
                let mut key = Vec::new();
                keys::group_key(&mut key, &group);
                self.batch.delete(Cf::Groups, &key);
                self.touch_group(&group);
                self.groups.remove(&group);
                return Ok(GroupOutcome {
                    info,
                    event: Some(event),
                });
            }
        };
        self.rebalance(&group, &conv_bytes, limits)?;
        if let Some(g) = self.groups.get_mut(&group) {
            g.rec.updated_ms = g.rec.updated_ms.max(now);
        }
        self.put_group_row(&group)?;
        self.touch_group(&group);
        self.finish_change(&group, &conv_bytes, &by, &by_device, body, &removed)
    }

    fn cached_info(&self, group: &GroupId) -> Result<GroupInfo, OpError> {
        let Some(g) = self.groups.get(group) else {
            return Err(OpError::NotFound("group"));
        };
        let mut rec = g.rec.clone();
        rec.member_count = g.members.len() as u32;
        info_of(group, &rec)
    }

    fn unchanged(&self, group: &GroupId) -> Result<GroupOutcome, OpError> {
        Ok(GroupOutcome {
            info: self.cached_info(group)?,
            event: None,
        })
    }

    fn set_members(
        &mut self,
        group: &GroupId,
        users: &[UserId],
        f: impl Fn(&mut MemberState),
    ) -> Result<(), OpError> {
        for u in users {
            if let Some(m) = self
                .groups
                .get_mut(group)
                .and_then(|g| g.members.get_mut(u))
            {
                f(m);
            }
            self.put_member_rows(group, u)?;
        }
        Ok(())
    }

    /// Appends a change's event and builds the outcome.
    fn finish_change(
        &mut self,
        group: &GroupId,
        conv_bytes: &[u8],
        by: &UserId,
        by_device: &DeviceId,
        body: Vec<u8>,
        removed: &[UserId],
    ) -> Result<GroupOutcome, OpError> {
        let entry = Entry {
            sender: by,
            sender_device: by_device,
            client_msg_id: [0; 16],
            kind: MessageKind::GROUP_EVENT,
            body,
            mentioned: Mentioned::Nobody,
        };
        let (event, _) = self.append_entry(group, conv_bytes, entry, removed)?;
        Ok(GroupOutcome {
            info: self.cached_info(group)?,
            event: Some(event),
        })
    }

    /// Appends a member's message to a group.
    pub(super) fn append_group(&mut self, msg: GroupMessage) -> Result<GroupAppendResult, OpError> {
        if msg.kind.is_event() || msg.kind.0 == 0 {
            return Err(OpError::Invalid("event kinds cannot be sent as messages"));
        }
        let seen = self.dedup_check(&msg.sender, msg.client_msg_id)?;
        if let Some(e) = seen.earlier {
            return Ok(GroupAppendResult::repeated(e));
        }
        if !self.load_group_state(&msg.group)? {
            return Err(OpError::NotFound("group"));
        }
        let Some(me) = self
            .groups
            .get(&msg.group)
            .and_then(|g| g.members.get(&msg.sender))
            .copied()
        else {
            return Err(OpError::NotAllowed("not a member of the group"));
        };
        if me.muted_until_ms > self.now {
            return Err(OpError::NotAllowed("muted in this group"));
        }
        let conv_bytes = group_conv(&msg.group);
        let read_mode = self
            .groups
            .get(&msg.group)
            .is_some_and(|g| g.rec.diffusion == Diffusion::READ.0);
        let cursor = if read_mode {
            Some(self.member_cursor(&msg.group, &msg.sender)?)
        } else {
            None
        };
        // Only members other than the sender are mentioned; other names are ignored (a
        // member may leave while a message naming them is on its way).
        let mentioned: Vec<UserId> = if msg.mention_all {
            Vec::new()
        } else {
            let g = self.groups.get(&msg.group);
            let mut v: Vec<UserId> = msg
                .mentions
                .iter()
                .filter(|u| **u != msg.sender && g.is_some_and(|g| g.members.contains_key(*u)))
                .cloned()
                .collect();
            v.sort();
            v.dedup();
            v
        };
        let entry = Entry {
            sender: &msg.sender,
            sender_device: &msg.sender_device,
            client_msg_id: msg.client_msg_id.0,
            kind: msg.kind,
            body: msg.body,
            mentioned: if msg.mention_all {
                Mentioned::All
            } else if mentioned.is_empty() {
                Mentioned::Nobody
            } else {
                Mentioned::Some(&mentioned)
            },
        };
        let (fanout, sender_inbox_seq) = self.append_entry(&msg.group, &conv_bytes, entry, &[])?;
        let seq = fanout.message.seq;
        let now = self.now;
        if read_mode {
            // Read diffusion keeps no row per member for a message: a mention is one mark per
            // mentioned member, or one for the whole group (@all), holding the message's seq;
            // the flag is up while the mark is past the member's read position.
            let mark = CursorRecord {
                acked: seq.0,
                read: 0,
                updated_ms: now,
                since: 0,
            };
            let mut key = Vec::new();
            if msg.mention_all {
                mention_all_key(&mut key, &msg.group);
                self.put(Cf::Cursors, &key, &mark)?;
            }
            for u in &mentioned {
                mention_key(&mut key, &msg.group, u);
                self.put(Cf::Cursors, &key, &mark)?;
            }
        }
        let dedup = DedupRecordRef {
            conv: &conv_bytes,
            conv_seq: seq.0,
            sender_inbox_seq: sender_inbox_seq.0,
            recipient_inbox_seq: 0,
            time_ms: now,
        };
        self.put(Cf::Dedup, &seen.key, &dedup)?;
        if let Some(c) = cursor {
            // A member has read everything up to what they send.
            self.put_cursor_row(
                &msg.group,
                &msg.sender,
                CursorState {
                    acked: seq.0,
                    read: seq.0,
                    since: c.since,
                },
            )?;
            self.touch_group(&msg.group);
        }
        let c = self.conv_slot(&conv_bytes)?;
        self.pending_dedup.insert(
            (seen.user, msg.client_msg_id.0),
            PendingAppend {
                conv: c,
                conv_seq: seq,
                sender_inbox_seq,
                recipient_inbox_seq: Seq::ZERO,
                time_ms: now,
                gen: self.gen,
            },
        );
        Ok(GroupAppendResult {
            conv_seq: seq,
            sender_inbox_seq,
            time_ms: now,
            duplicate: false,
            fanout: Some(fanout),
        })
    }

    /// Marks a group read for a member. Under write diffusion this is the one-to-one rule on
    /// the member's recent row (`None`: let `mark_read` do it); under read diffusion the read
    /// cursor moves.
    pub(super) fn mark_group_read(
        &mut self,
        req: &MarkRead,
        group: &GroupId,
    ) -> Result<Option<ReadState>, OpError> {
        // A group that is gone, or a member who left, still has the recent row of the write
        // diffusion days to clear.
        if !self.load_group_state(group)? {
            return Ok(None);
        }
        let Some(g) = self.groups.get(group) else {
            return Ok(None);
        };
        if g.rec.diffusion != Diffusion::READ.0 || !g.members.contains_key(&req.user) {
            return Ok(None);
        }
        let conv_bytes = group_conv(group);
        let c = self.conv_slot(&conv_bytes)?;
        let last = self.convs.get(c).last;
        let cursor = self.member_cursor(group, &req.user)?;
        let read = cursor.read.max(req.up_to.0.min(last.0));
        if read != cursor.read {
            self.put_cursor_row(
                group,
                &req.user,
                CursorState {
                    acked: cursor.acked.max(read),
                    read,
                    since: cursor.since,
                },
            )?;
            self.touch_group(group);
        }
        Ok(Some(ReadState {
            read_seq: Seq(read),
            unread: u32::try_from(last.0.saturating_sub(read)).unwrap_or(u32::MAX),
            total_unread: 0,
            previous_read_seq: Seq(cursor.read),
        }))
    }

    /// Records a device's SYNC positions in read-diffused groups (positions only move forward).
    pub(super) fn put_group_positions(
        &mut self,
        user: &UserId,
        device: &DeviceId,
        positions: &[(GroupId, Seq)],
    ) -> Result<(), OpError> {
        let mut key = Vec::new();
        for (group, seq) in positions {
            keys::member_key(&mut key, group, user);
            keys::put_id(&mut key, device.as_str());
            let current = crate::group_read::device_position_at(&*self.engine, &key)?;
            if *seq <= current {
                continue;
            }
            let rec = CursorRecord {
                acked: seq.0,
                read: 0,
                updated_ms: self.now,
                since: 0,
            };
            self.put(Cf::Cursors, &key, &rec)?;
            self.touch(Cf::Cursors, &key);
        }
        Ok(())
    }

    /// Whether a device-position write must wait for rows of a batch in flight.
    pub(super) fn group_positions_in_flight(
        &mut self,
        user: &UserId,
        device: &DeviceId,
        positions: &[(GroupId, Seq)],
    ) -> bool {
        if self.touched.is_empty() {
            return false;
        }
        let mut key = mem::take(&mut self.k1);
        let mut hit = false;
        for (group, _) in positions {
            keys::member_key(&mut key, group, user);
            keys::put_id(&mut key, device.as_str());
            self.k1 = key;
            hit = self.is_touched(Cf::Cursors, 1);
            key = mem::take(&mut self.k1);
            if hit {
                break;
            }
        }
        self.k1 = key;
        hit
    }
}
