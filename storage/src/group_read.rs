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
    Diffusion, GroupInfo, GroupReaders, GroupReceipts, GroupSyncPage, HistoryDirection, Member,
    MessageReads, RecentConversation, StoredMessage,
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
        let (_, read_seq, since) = cursor_at(engine, &key)?;
        let read_seq = read_seq.min(last.0);
        let unread = u32::try_from(last.0 - read_seq).unwrap_or(u32::MAX);
        let mentioned = mention_mark(engine, &m.group, user)? > read_seq.max(since);
        total += u64::from(unread);
        let last_message = read::message(engine, &conv, last)?;
        out.push(RecentConversation {
            conv,
            last_seq: last,
            last_time_ms: last_message.as_ref().map_or(info.updated_ms, |m| m.time_ms),
            last_message: None,
            unread,
            read_seq: Seq(read_seq),
            mentioned,
            updated_ms: info.updated_ms,
        });
    }
    Ok((out, total))
}

/// The seq of the last message of a read-diffusion group that mentions `user`, by name or as
/// everyone (@all); zero when none does.
fn mention_mark(
    engine: &impl KvEngine,
    group: &GroupId,
    user: &UserId,
) -> Result<u64, EngineError> {
    let mut key = Vec::new();
    crate::core::mention_key(&mut key, group, user);
    let own = cursor_at(engine, &key)?.0;
    crate::core::mention_all_key(&mut key, group);
    Ok(own.max(cursor_at(engine, &key)?.0))
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

/// Read receipts of messages `seqs` of a group, for a member: under write diffusion, for each
/// seq naming a message, how many current members besides its sender have read it (their
/// recent row's read position reaches it) and, with `with_readers`, who; under read diffusion
/// only the member's own read position (members keep cursors, which are not scanned per
/// message). `NotFound` without the group, `NotAllowed` for a non-member.
pub(crate) fn receipts(
    engine: &impl KvEngine,
    group: &GroupId,
    user: &UserId,
    seqs: &[Seq],
    with_readers: bool,
) -> Result<Result<GroupReceipts, OpError>, EngineError> {
    let Some((info, _, _)) = group_state(engine, group)? else {
        return Ok(Err(OpError::NotFound("group")));
    };
    if member(engine, group, user)?.is_none() {
        return Ok(Err(OpError::NotAllowed("not a member of the group")));
    }
    let mut key = Vec::new();
    if info.diffusion == Diffusion::READ {
        keys::member_key(&mut key, group, user);
        let (_, read_seq, _) = cursor_at(engine, &key)?;
        return Ok(Ok(GroupReceipts {
            diffusion: Diffusion::READ,
            my_read_seq: Seq(read_seq),
            messages: Vec::new(),
        }));
    }
    let conv = ConvKey::Group(group.clone());
    // Every member's read position, read once for all the asked messages.
    let mut positions = Vec::new();
    let mut my_read_seq = Seq::ZERO;
    for m in read::members(engine, group)? {
        keys::recent_key(&mut key, &m.user, &conv);
        let pos = engine
            .get_with(Cf::Recent, &key, |v| {
                access::<crate::records::ArchivedRecentRecord>(Cf::Recent, v)
                    .map(|r| Seq(r.read_seq.to_native()))
            })?
            .transpose()?
            .unwrap_or(Seq::ZERO);
        if m.user == *user {
            my_read_seq = pos;
        }
        positions.push((m.user, pos));
    }
    let mut messages = Vec::with_capacity(seqs.len());
    for &seq in seqs {
        let Some(message) = read::message(engine, &conv, seq)? else {
            continue;
        };
        let mut entry = MessageReads {
            seq,
            members: 0,
            read: 0,
            readers: Vec::new(),
        };
        for (u, pos) in &positions {
            if *u == message.sender {
                continue;
            }
            entry.members += 1;
            if *pos >= seq {
                entry.read += 1;
                if with_readers {
                    entry.readers.push(u.clone());
                }
            }
        }
        messages.push(entry);
    }
    Ok(Ok(GroupReceipts {
        diffusion: Diffusion::WRITE,
        my_read_seq,
        messages,
    }))
}

/// The senders (but `reader`) of the content messages of a write-diffusion group in
/// `(after, up_to]`, looking at no more than the `scan` newest of them: who gets a read receipt
/// when `reader` reads that far. Empty under read diffusion.
pub(crate) fn read_senders(
    engine: &impl KvEngine,
    group: &GroupId,
    reader: &UserId,
    after: Seq,
    up_to: Seq,
    scan: usize,
) -> Result<Vec<UserId>, EngineError> {
    if up_to <= after {
        return Ok(Vec::new());
    }
    match group_state(engine, group)? {
        Some((info, _, _)) if info.diffusion == Diffusion::WRITE => {}
        _ => return Ok(Vec::new()),
    }
    let conv = ConvKey::Group(group.clone());
    let mut from = Vec::new();
    keys::message_key(&mut from, &conv, after.next());
    let mut to = Vec::new();
    keys::message_key(&mut to, &conv, up_to.next());
    let mut senders: Vec<UserId> = Vec::new();
    engine.scan(
        Cf::Messages,
        ScanRange {
            start: &from,
            end: Some(&to),
        },
        Direction::Backward,
        scan,
        &mut |_, v| {
            let rec = access::<ArchivedMessageRecord>(Cf::Messages, v)?;
            if crate::ids::MessageKind(rec.kind).is_event()
                || rec.sender.as_str() == reader.as_str()
            {
                return Ok(());
            }
            if !senders.iter().any(|s| s.as_str() == rec.sender.as_str()) {
                let s = UserId::new(rec.sender.as_str()).map_err(|e| bad(Cf::Messages, e))?;
                senders.push(s);
            }
            Ok(())
        },
    )?;
    Ok(senders)
}
