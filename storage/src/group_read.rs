//! Read queries of groups: the read-diffused part of SYNC, recent-list entries of read-diffusion
//! groups (unread from cursors), membership-checked history and readers of a message. They run
//! on the reader threads like every query of `read`.

use crate::engine::{Cf, Direction, EngineError, KvEngine, ScanRange};
use crate::error::OpError;
use crate::ids::{ConvKey, DeviceId, GroupId, MessageFlags, Seq, UserId};
use crate::keys::{self, prefix_end, KeyReader};
use crate::read::{self, last_seq_in};
use crate::records::{access, bad, stored_message, ArchivedCursorRecord, ArchivedMessageRecord};
use crate::types::{
    Diffusion, GroupInfo, GroupReaders, GroupSyncPage, HistoryDirection, Member,
    RecentConversation, StoredMessage,
};

/// Most messages a SYNC page's group part scans per group beyond what it returns (entries
/// stored by write diffusion between read-diffused ones are skipped, not returned).
const SCAN_CHUNK: usize = 256;

/// A member's cursor row: (acked, read, since); zero when absent.
fn cursor_at(engine: &impl KvEngine, key: &[u8]) -> Result<(u64, u64, u64), EngineError> {
    Ok(engine
        .get_with(Cf::Cursors, key, |v| {
            access::<ArchivedCursorRecord>(Cf::Cursors, v)
                .map(|r| (r.acked.to_native(), r.read.to_native(), r.since.to_native()))
        })?
        .transpose()?
        .unwrap_or_default())
}

/// A device's SYNC position in a group, under `group ‖ user ‖ device` (zero when absent).
pub(crate) fn device_position_at(engine: &impl KvEngine, key: &[u8]) -> Result<Seq, EngineError> {
    Ok(Seq(cursor_at(engine, key)?.0))
}

/// The stored group metadata with its diffusion bookkeeping: (info, mode_since, read_until).
fn group_state(
    engine: &impl KvEngine,
    group: &GroupId,
) -> Result<Option<(GroupInfo, u64, u64)>, EngineError> {
    let mut key = Vec::new();
    keys::group_key(&mut key, group);
    engine
        .get_with(Cf::Groups, &key, |v| {
            let r = access::<crate::records::ArchivedGroupRecord>(Cf::Groups, v)?;
            Ok((
                read::group_from(group.clone(), r)?,
                r.mode_since.to_native(),
                r.read_until.to_native(),
            ))
        })?
        .transpose()
}

/// One member of a group, if `user` is one.
pub(crate) fn member(
    engine: &impl KvEngine,
    group: &GroupId,
    user: &UserId,
) -> Result<Option<Member>, EngineError> {
    let mut key = Vec::new();
    keys::member_key(&mut key, group, user);
    engine
        .get_with(Cf::Members, &key, |v| {
            access::<crate::records::ArchivedMemberRecord>(Cf::Members, v).map(|r| Member {
                user: user.clone(),
                role: crate::types::MemberRole(r.role),
                muted_until_ms: r.muted_until_ms.to_native(),
                joined_ms: r.joined_ms.to_native(),
            })
        })?
        .transpose()
}

/// The read-diffused messages of `user`'s groups that `device` has not fetched: group by group
/// in group id byte order, each from the device's position (or, for a device that never
/// synced the group, from the member's join) in seq order. At most `limit` messages.
pub(crate) fn sync_page(
    engine: &impl KvEngine,
    user: &UserId,
    device: &DeviceId,
    limit: usize,
) -> Result<GroupSyncPage, EngineError> {
    let mut groups: Vec<GroupId> = read::groups_of(engine, user)?
        .into_iter()
        .map(|m| m.group)
        .collect();
    groups.sort_by(|a, b| a.as_str().as_bytes().cmp(b.as_str().as_bytes()));
    let mut page = GroupSyncPage::default();
    let mut key = Vec::new();
    for group in groups {
        let Some((info, mode_since, read_until)) = group_state(engine, &group)? else {
            continue;
        };
        keys::member_key(&mut key, &group, user);
        let (_, _, since) = cursor_at(engine, &key)?;
        keys::put_id(&mut key, device.as_str());
        let position = device_position_at(engine, &key)?.0;
        let mut start = position.max(since);
        let end = if info.diffusion == Diffusion::READ {
            // Entries between the last read-diffused phase and this one were written to
            // inboxes: skip them without reading.
            if read_until <= start {
                start = start.max(mode_since.saturating_sub(1));
            }
            u64::MAX
        } else {
            read_until
        };
        if start >= end {
            continue;
        }
        let conv = ConvKey::Group(group.clone());
        let mut reached = start;
        let mut returned = false;
        // Scans in chunks until the group is exhausted or the page is full.
        loop {
            if page.messages.len() >= limit {
                page.more = true;
                break;
            }
            let mut from = Vec::new();
            keys::message_key(&mut from, &conv, Seq(reached).next());
            let bound = if end == u64::MAX {
                let mut p = Vec::new();
                keys::conv_prefix(&mut p, &conv);
                prefix_end(&p)
            } else {
                let mut to = Vec::new();
                keys::message_key(&mut to, &conv, Seq(end).next());
                Some(to)
            };
            let prefix_len = from.len() - 8;
            let mut visited = 0usize;
            let mut full = false;
            engine.scan(
                Cf::Messages,
                ScanRange {
                    start: &from,
                    end: bound.as_deref(),
                },
                Direction::Forward,
                SCAN_CHUNK,
                &mut |k, v| {
                    if full {
                        return Ok(());
                    }
                    let seq = KeyReader::new(&k[prefix_len..])
                        .seq()
                        .map_err(|e| bad(Cf::Messages, e))?;
                    let rec = access::<ArchivedMessageRecord>(Cf::Messages, v)?;
                    if MessageFlags(rec.flags).contains(MessageFlags::READ_DIFFUSED) {
                        if page.messages.len() >= limit {
                            full = true;
                            return Ok(());
                        }
                        page.messages.push(stored_message(conv.clone(), seq, rec)?);
                        returned = true;
                    }
                    reached = seq.0;
                    visited += 1;
                    Ok(())
                },
            )?;
            if full {
                page.more = true;
                break;
            }
            if visited < SCAN_CHUNK {
                break;
            }
        }
        if reached > position && returned {
            page.positions.push((group.clone(), Seq(reached)));
        }
        if page.more {
            break;
        }
    }
    Ok(page)
}

/// Recent-list entries of `user`'s read-diffusion groups, with unread from cursors (the
/// group's last seq minus the member's read seq), and their sum.
pub(crate) fn read_diffusion_recent(
    engine: &impl KvEngine,
    user: &UserId,
) -> Result<(Vec<RecentConversation>, u64), EngineError> {
    let mut out = Vec::new();
    let mut total = 0u64;
    let mut key = Vec::new();
    for m in read::groups_of(engine, user)? {
        let Some((info, _, _)) = group_state(engine, &m.group)? else {
            continue;
        };
        if info.diffusion != Diffusion::READ {
            continue;
        }
        let conv = ConvKey::Group(m.group.clone());
        keys::conv_prefix(&mut key, &conv);
        let last = last_seq_in(engine, Cf::Messages, &key)?;
        keys::member_key(&mut key, &m.group, user);
        let (_, read_seq, _) = cursor_at(engine, &key)?;
        let read_seq = read_seq.min(last.0);
        let unread = u32::try_from(last.0 - read_seq).unwrap_or(u32::MAX);
        total += u64::from(unread);
        let last_message = read::message(engine, &conv, last)?;
        out.push(RecentConversation {
            conv,
            last_seq: last,
            last_time_ms: last_message.as_ref().map_or(info.updated_ms, |m| m.time_ms),
            last_message: None,
            unread,
            read_seq: Seq(read_seq),
            mentioned: false,
            updated_ms: info.updated_ms,
        });
    }
    Ok((out, total))
}

/// A page of a group's history for a member: `NotFound` without the group, `NotAllowed` for
/// a non-member.
pub(crate) fn history(
    engine: &impl KvEngine,
    group: &GroupId,
    user: &UserId,
    anchor: Seq,
    direction: HistoryDirection,
    limit: usize,
) -> Result<Result<Vec<StoredMessage>, OpError>, EngineError> {
    if group_state(engine, group)?.is_none() {
        return Ok(Err(OpError::NotFound("group")));
    }
    if member(engine, group, user)?.is_none() {
        return Ok(Err(OpError::NotAllowed("not a member of the group")));
    }
    let conv = ConvKey::Group(group.clone());
    Ok(Ok(read::history(engine, &conv, anchor, direction, limit)?))
}

/// Group metadata with up to `max_members` members (all when the group is smaller), for a
/// member or anyone (`user` `None`).
pub(crate) fn info(
    engine: &impl KvEngine,
    group: &GroupId,
    user: Option<&UserId>,
    max_members: usize,
) -> Result<Result<(GroupInfo, Vec<Member>), OpError>, EngineError> {
    let Some((info, _, _)) = group_state(engine, group)? else {
        return Ok(Err(OpError::NotFound("group")));
    };
    if let Some(user) = user {
        if member(engine, group, user)?.is_none() {
            return Ok(Err(OpError::NotAllowed("not a member of the group")));
        }
    }
    let mut members = read::members(engine, group)?;
    members.truncate(max_members);
    Ok(Ok((info, members)))
}

/// The groups `user` belongs to, with their metadata, in group id byte order.
pub(crate) fn groups_of(
    engine: &impl KvEngine,
    user: &UserId,
) -> Result<Vec<GroupInfo>, EngineError> {
    let mut out = Vec::new();
    for m in read::groups_of(engine, user)? {
        if let Some((info, _, _)) = group_state(engine, &m.group)? {
            out.push(info);
        }
    }
    out.sort_by(|a, b| a.id.as_str().as_bytes().cmp(b.id.as_str().as_bytes()));
    Ok(out)
}

/// Who has read message `seq` of a group (write diffusion: the members whose recent row's read
/// position reaches it, the sender excepted), and the asking member's own read position.
pub(crate) fn readers(
    engine: &impl KvEngine,
    group: &GroupId,
    user: &UserId,
    seq: Seq,
) -> Result<Result<GroupReaders, OpError>, EngineError> {
    let Some((info, _, _)) = group_state(engine, group)? else {
        return Ok(Err(OpError::NotFound("group")));
    };
    if member(engine, group, user)?.is_none() {
        return Ok(Err(OpError::NotAllowed("not a member of the group")));
    }
    let conv = ConvKey::Group(group.clone());
    let Some(message) = read::message(engine, &conv, seq)? else {
        return Ok(Err(OpError::NotFound("message")));
    };
    let mut key = Vec::new();
    let read_of = |key: &mut Vec<u8>, u: &UserId| -> Result<Seq, EngineError> {
        keys::recent_key(key, u, &conv);
        Ok(engine
            .get_with(Cf::Recent, key, |v| {
                access::<crate::records::ArchivedRecentRecord>(Cf::Recent, v)
                    .map(|r| Seq(r.read_seq.to_native()))
            })?
            .transpose()?
            .unwrap_or(Seq::ZERO))
    };
    if info.diffusion == Diffusion::READ {
        keys::member_key(&mut key, group, user);
        let (_, read_seq, _) = cursor_at(engine, &key)?;
        return Ok(Ok(GroupReaders {
            diffusion: Diffusion::READ,
            others: 0,
            readers: Vec::new(),
            my_read_seq: Seq(read_seq),
        }));
    }
    let mut others = 0u32;
    let mut readers = Vec::new();
    for m in read::members(engine, group)? {
        if m.user == message.sender {
            continue;
        }
        others += 1;
        if read_of(&mut key, &m.user)? >= seq {
            readers.push(m.user);
        }
    }
    let my_read_seq = read_of(&mut key, user)?;
    Ok(Ok(GroupReaders {
        diffusion: Diffusion::WRITE,
        others,
        readers,
        my_read_seq,
    }))
}
