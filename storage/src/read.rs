//! Read queries, written once against [`KvEngine`]. They run on the store's reader threads (never
//! on an io core) and see every write whose completion has been delivered.

use crate::engine::{Cf, Direction, EngineError, KvEngine, ScanRange, Visitor};
use crate::ids::{ConvKey, DeviceId, GroupId, Seq, UserId};
use crate::keys::{self, decode_conv, prefix_end, KeyReader};
use crate::records::{
    access, bad, stored_message, ArchivedCursorRecord, ArchivedGroupRecord,
    ArchivedInboxHeadRecord, ArchivedInboxRecord, ArchivedMemberOfRecord, ArchivedMemberRecord,
    ArchivedMessageRecord, ArchivedPositionRecord, ArchivedRecentRecord, ArchivedRelationRecord,
    ArchivedRelationSettingsRecord, ArchivedTotalUnreadRecord,
};
use crate::types::{
    DevicePosition, DevicePositionEntry, Diffusion, GroupCursor, GroupInfo, HistoryDirection,
    InboxMessage, Member, MemberRole, Membership, RecentConversation, RecentCursor, RecentList,
    RecentPage, Relation, RelationKind, StoredMessage,
};

/// Most conversations a recent list considers (they are ordered by time after the scan).
pub(crate) const RECENT_SCAN_LIMIT: usize = 10_000;

fn bad_key(cf: Cf) -> impl Fn(keys::KeyError) -> EngineError {
    move |e| bad(cf, e)
}

/// Visits every entry whose key starts with `prefix`, skipping the bare `prefix` key itself.
fn scan_prefix(
    engine: &impl KvEngine,
    cf: Cf,
    prefix: &[u8],
    limit: usize,
    visit: &mut Visitor<'_>,
) -> Result<usize, EngineError> {
    let mut start = prefix.to_vec();
    // Every child key is longer than the prefix, so `prefix ‖ 0x00` is the first possible one.
    start.push(0);
    let end = prefix_end(prefix);
    engine.scan(
        cf,
        ScanRange {
            start: &start,
            end: end.as_deref(),
        },
        Direction::Forward,
        limit,
        visit,
    )
}

/// One message of a conversation.
pub(crate) fn message(
    engine: &impl KvEngine,
    conv: &ConvKey,
    seq: Seq,
) -> Result<Option<StoredMessage>, EngineError> {
    let mut key = Vec::new();
    keys::message_key(&mut key, conv, seq);
    engine
        .get_with(Cf::Messages, &key, |value| {
            let rec = access::<ArchivedMessageRecord>(Cf::Messages, value)?;
            stored_message(conv.clone(), seq, rec)
        })?
        .transpose()
}

/// Inbox entries after `after`, oldest first, each joined with its message.
pub(crate) fn inbox_page(
    engine: &impl KvEngine,
    user: &UserId,
    after: Seq,
    limit: usize,
) -> Result<Vec<InboxMessage>, EngineError> {
    let mut start = Vec::new();
    if after == Seq::MAX {
        return Ok(Vec::new());
    }
    keys::inbox_key(&mut start, user, after.next());
    let mut prefix = Vec::new();
    keys::user_key(&mut prefix, user);
    let end = prefix_end(&prefix);
    // First collect the references, then join: the join must not run inside the scan callback.
    let mut refs: Vec<(Seq, Vec<u8>, Seq)> = Vec::with_capacity(limit.min(1024));
    engine.scan(
        Cf::Inbox,
        ScanRange {
            start: &start,
            end: end.as_deref(),
        },
        Direction::Forward,
        limit,
        &mut |key, value| {
            let mut r = KeyReader::new(key);
            r.id().map_err(bad_key(Cf::Inbox))?;
            let inbox_seq = r.seq().map_err(bad_key(Cf::Inbox))?;
            let rec = access::<ArchivedInboxRecord>(Cf::Inbox, value)?;
            refs.push((
                inbox_seq,
                rec.conv.as_slice().to_vec(),
                Seq(rec.conv_seq.to_native()),
            ));
            Ok(())
        },
    )?;
    let mut out = Vec::with_capacity(refs.len());
    let mut key = Vec::new();
    for (inbox_seq, conv_bytes, conv_seq) in refs {
        key.clear();
        key.extend_from_slice(&conv_bytes);
        keys::put_seq(&mut key, conv_seq);
        let message = engine
            .get_with(Cf::Messages, &key, |value| {
                let rec = access::<ArchivedMessageRecord>(Cf::Messages, value)?;
                let conv = decode_conv(&conv_bytes).map_err(bad_key(Cf::Inbox))?;
                stored_message(conv, conv_seq, rec)
            })?
            .transpose()?
            .ok_or_else(|| {
                bad(
                    Cf::Inbox,
                    format!("inbox {inbox_seq} refers to a missing message"),
                )
            })?;
        out.push(InboxMessage { inbox_seq, message });
    }
    Ok(out)
}

/// The highest inbox seq assigned to `user` (zero if none): the head row, which outlives
/// expired entries, or the newest entry if that is higher (they are written in one batch, but
/// the two reads here are not one snapshot).
pub(crate) fn inbox_head(engine: &impl KvEngine, user: &UserId) -> Result<Seq, EngineError> {
    let mut prefix = Vec::new();
    keys::user_key(&mut prefix, user);
    inbox_head_at(engine, &prefix)
}

/// [`inbox_head`] of the user whose bare key is `user_key`.
pub(crate) fn inbox_head_at(engine: &impl KvEngine, user_key: &[u8]) -> Result<Seq, EngineError> {
    let head = engine
        .get_with(Cf::Inbox, user_key, |value| {
            access::<ArchivedInboxHeadRecord>(Cf::Inbox, value).map(|r| Seq(r.last_seq.to_native()))
        })?
        .transpose()?
        .unwrap_or(Seq::ZERO);
    Ok(head.max(last_seq_in(engine, Cf::Inbox, user_key)?))
}

/// The seq in the last key under `prefix ‖ seq` (zero if there is none).
pub(crate) fn last_seq_in(
    engine: &impl KvEngine,
    cf: Cf,
    prefix: &[u8],
) -> Result<Seq, EngineError> {
    let end = prefix_end(prefix);
    let mut start = prefix.to_vec();
    // Skips the bare `prefix` key (a head or counter row), which sorts before every child.
    start.push(0);
    let mut last = Seq::ZERO;
    engine.scan(
        cf,
        ScanRange {
            start: &start,
            end: end.as_deref(),
        },
        Direction::Backward,
        1,
        &mut |k, _| {
            last = KeyReader::new(&k[prefix.len()..])
                .seq()
                .map_err(bad_key(cf))?;
            Ok(())
        },
    )?;
    Ok(last)
}

/// A page of a conversation's history next to `anchor`.
pub(crate) fn history(
    engine: &impl KvEngine,
    conv: &ConvKey,
    anchor: Seq,
    direction: HistoryDirection,
    limit: usize,
) -> Result<Vec<StoredMessage>, EngineError> {
    let mut prefix = Vec::new();
    keys::conv_prefix(&mut prefix, conv);
    let prefix_len = prefix.len();
    let mut bound = Vec::new();
    let mut out = Vec::new();
    let mut visit = |key: &[u8], value: &[u8]| -> Result<(), EngineError> {
        let mut r = KeyReader::new(&key[prefix_len..]);
        let seq = r.seq().map_err(bad_key(Cf::Messages))?;
        let rec = access::<ArchivedMessageRecord>(Cf::Messages, value)?;
        out.push(stored_message(conv.clone(), seq, rec)?);
        Ok(())
    };
    match direction {
        HistoryDirection::Before => {
            keys::message_key(&mut bound, conv, anchor);
            engine.scan(
                Cf::Messages,
                ScanRange {
                    start: &prefix,
                    end: Some(&bound),
                },
                Direction::Backward,
                limit,
                &mut visit,
            )?;
        }
        HistoryDirection::After => {
            if anchor == Seq::MAX {
                return Ok(Vec::new());
            }
            keys::message_key(&mut bound, conv, anchor.next());
            let end = prefix_end(&prefix);
            engine.scan(
                Cf::Messages,
                ScanRange {
                    start: &bound,
                    end: end.as_deref(),
                },
                Direction::Forward,
                limit,
                &mut visit,
            )?;
        }
    }
    Ok(out)
}

/// A user's unread total.
pub(crate) fn total_unread(engine: &impl KvEngine, user: &UserId) -> Result<u64, EngineError> {
    let mut key = Vec::new();
    keys::user_key(&mut key, user);
    Ok(engine
        .get_with(Cf::Recent, &key, |value| {
            access::<ArchivedTotalUnreadRecord>(Cf::Recent, value).map(|r| r.total.to_native())
        })?
        .transpose()?
        .unwrap_or(0))
}

/// A user's recent conversations, most recently active first, with the last message joined.
pub(crate) fn recent(
    engine: &impl KvEngine,
    user: &UserId,
    limit: usize,
) -> Result<RecentList, EngineError> {
    let page = recent_page(engine, user, None, limit)?;
    Ok(RecentList {
        conversations: page.conversations,
        total_unread: page.total_unread,
    })
}

/// Up to `limit` recent conversations after `after`, in the list's order (most recently active
/// first, then by conversation key), with the last message joined.
///
/// Rows are keyed by conversation, not time, so this reads all of a user's rows (up to
/// [`RECENT_SCAN_LIMIT`]) and orders them; keeping a time-ordered index instead would cost two
/// more rows per participant on every message.
pub(crate) fn recent_page(
    engine: &impl KvEngine,
    user: &UserId,
    after: Option<&RecentCursor>,
    limit: usize,
) -> Result<RecentPage, EngineError> {
    let mut prefix = Vec::new();
    keys::user_key(&mut prefix, user);
    let mut conversations = Vec::new();
    scan_prefix(
        engine,
        Cf::Recent,
        &prefix,
        RECENT_SCAN_LIMIT,
        &mut |key, value| {
            let rec = access::<ArchivedRecentRecord>(Cf::Recent, value)?;
            let last_time_ms = rec.last_time_ms.to_native();
            // Newer than the cursor: on an earlier page. Decided before decoding the key.
            if after.is_some_and(|c| last_time_ms > c.time_ms) {
                return Ok(());
            }
            let mut r = KeyReader::new(key);
            r.id().map_err(bad_key(Cf::Recent))?;
            let conv = r.conv().map_err(bad_key(Cf::Recent))?;
            if let Some(c) = after {
                let past = last_time_ms < c.time_ms || c.conv.as_ref().is_some_and(|at| conv > *at);
                if !past {
                    return Ok(());
                }
            }
            conversations.push(RecentConversation {
                conv,
                last_seq: Seq(rec.last_seq.to_native()),
                last_time_ms,
                last_message: None,
                unread: rec.unread.to_native(),
                read_seq: Seq(rec.read_seq.to_native()),
                mentioned: rec.mentioned,
                updated_ms: rec.updated_ms.to_native(),
            });
            Ok(())
        },
    )?;
    // Read-diffusion groups keep no recent rows up to date: their entries come from cursors.
    let (mut groups, group_unread) = crate::group_read::read_diffusion_recent(engine, user)?;
    // Topics are read-diffused too: their entries also come from cursors.
    let (topics, topic_unread) = crate::topics::recent(engine, user)?;
    groups.extend(topics);
    if !groups.is_empty() {
        conversations.retain(|c| !groups.iter().any(|g| g.conv == c.conv));
        conversations.extend(groups.into_iter().filter(|g| match after {
            None => true,
            Some(c) => {
                g.last_time_ms < c.time_ms
                    || (g.last_time_ms == c.time_ms
                        && c.conv.as_ref().is_some_and(|at| g.conv > *at))
            }
        }));
    }
    let order = |a: &RecentConversation, b: &RecentConversation| {
        b.last_time_ms
            .cmp(&a.last_time_ms)
            .then_with(|| a.conv.cmp(&b.conv))
    };
    let more = conversations.len() > limit;
    if more {
        // Only the page needs ordering among itself.
        conversations.select_nth_unstable_by(limit, order);
        conversations.truncate(limit);
    }
    conversations.sort_by(order);
    for c in &mut conversations {
        c.last_message = message(engine, &c.conv, c.last_seq)?;
    }
    Ok(RecentPage {
        conversations,
        total_unread: total_unread(engine, user)? + group_unread + topic_unread,
        more,
    })
}

fn position_from(rec: &ArchivedPositionRecord) -> DevicePosition {
    DevicePosition {
        pulled: Seq(rec.pulled.to_native()),
        acked: Seq(rec.acked.to_native()),
        read: Seq(rec.read.to_native()),
        updated_ms: rec.updated_ms.to_native(),
    }
}

/// One device's positions (all zero if it never pulled).
pub(crate) fn position(
    engine: &impl KvEngine,
    user: &UserId,
    device: &DeviceId,
) -> Result<DevicePosition, EngineError> {
    let mut key = Vec::new();
    keys::position_key(&mut key, user, device);
    Ok(engine
        .get_with(Cf::Positions, &key, |value| {
            access::<ArchivedPositionRecord>(Cf::Positions, value).map(position_from)
        })?
        .transpose()?
        .unwrap_or_default())
}

/// Every device's positions for a user.
pub(crate) fn positions(
    engine: &impl KvEngine,
    user: &UserId,
) -> Result<Vec<DevicePositionEntry>, EngineError> {
    let mut prefix = Vec::new();
    keys::user_key(&mut prefix, user);
    let mut out = Vec::new();
    scan_prefix(
        engine,
        Cf::Positions,
        &prefix,
        usize::MAX,
        &mut |key, value| {
            let mut r = KeyReader::new(key);
            r.id().map_err(bad_key(Cf::Positions))?;
            let device = r.device().map_err(bad_key(Cf::Positions))?;
            let rec = access::<ArchivedPositionRecord>(Cf::Positions, value)?;
            out.push(DevicePositionEntry {
                device,
                position: position_from(rec),
            });
            Ok(())
        },
    )?;
    Ok(out)
}

pub(crate) fn group_from(id: GroupId, rec: &ArchivedGroupRecord) -> Result<GroupInfo, EngineError> {
    Ok(GroupInfo {
        id,
        name: rec.name.as_str().to_string(),
        announcement: rec.announcement.as_str().to_string(),
        avatar: rec.avatar.as_str().to_string(),
        owner: UserId::new(rec.owner.as_str()).map_err(|e| bad(Cf::Groups, e))?,
        settings: rec.settings.to_native(),
        diffusion: Diffusion(rec.diffusion),
        member_count: rec.member_count.to_native(),
        created_ms: rec.created_ms.to_native(),
        updated_ms: rec.updated_ms.to_native(),
    })
}

/// Group metadata.
pub(crate) fn group(
    engine: &impl KvEngine,
    id: &GroupId,
) -> Result<Option<GroupInfo>, EngineError> {
    let mut key = Vec::new();
    keys::group_key(&mut key, id);
    engine
        .get_with(Cf::Groups, &key, |value| {
            group_from(
                id.clone(),
                access::<ArchivedGroupRecord>(Cf::Groups, value)?,
            )
        })?
        .transpose()
}

/// A group's members, in user-key order.
pub(crate) fn members(engine: &impl KvEngine, id: &GroupId) -> Result<Vec<Member>, EngineError> {
    let mut prefix = Vec::new();
    keys::group_key(&mut prefix, id);
    let mut out = Vec::new();
    scan_prefix(
        engine,
        Cf::Members,
        &prefix,
        usize::MAX,
        &mut |key, value| {
            let mut r = KeyReader::new(key);
            r.id().map_err(bad_key(Cf::Members))?;
            let user = r.user().map_err(bad_key(Cf::Members))?;
            let rec = access::<ArchivedMemberRecord>(Cf::Members, value)?;
            out.push(Member {
                user,
                role: MemberRole(rec.role),
                muted_until_ms: rec.muted_until_ms.to_native(),
                joined_ms: rec.joined_ms.to_native(),
            });
            Ok(())
        },
    )?;
    Ok(out)
}

/// The groups a user belongs to.
pub(crate) fn groups_of(
    engine: &impl KvEngine,
    user: &UserId,
) -> Result<Vec<Membership>, EngineError> {
    let mut prefix = Vec::new();
    keys::user_key(&mut prefix, user);
    let mut out = Vec::new();
    scan_prefix(
        engine,
        Cf::MemberOf,
        &prefix,
        usize::MAX,
        &mut |key, value| {
            let mut r = KeyReader::new(key);
            r.id().map_err(bad_key(Cf::MemberOf))?;
            let group = r.group().map_err(bad_key(Cf::MemberOf))?;
            let rec = access::<ArchivedMemberOfRecord>(Cf::MemberOf, value)?;
            out.push(Membership {
                group,
                role: MemberRole(rec.role),
                joined_ms: rec.joined_ms.to_native(),
            });
            Ok(())
        },
    )?;
    Ok(out)
}

/// A member's read-diffusion cursor (zero if never set).
pub(crate) fn cursor(
    engine: &impl KvEngine,
    group: &GroupId,
    user: &UserId,
) -> Result<GroupCursor, EngineError> {
    let mut key = Vec::new();
    keys::member_key(&mut key, group, user);
    Ok(engine
        .get_with(Cf::Cursors, &key, |value| {
            access::<ArchivedCursorRecord>(Cf::Cursors, value).map(|r| GroupCursor {
                acked: Seq(r.acked.to_native()),
                read: Seq(r.read.to_native()),
                updated_ms: r.updated_ms.to_native(),
            })
        })?
        .transpose()?
        .unwrap_or_default())
}

/// Up to `limit` of a user's relations of one kind, in key order, starting after `after`
/// (`None`: from the first).
pub(crate) fn relation_page(
    engine: &impl KvEngine,
    user: &UserId,
    kind: RelationKind,
    after: Option<&UserId>,
    limit: usize,
) -> Result<Vec<Relation>, EngineError> {
    let mut prefix = Vec::new();
    keys::relation_prefix(&mut prefix, user, kind.0);
    let end = prefix_end(&prefix);
    let mut start = Vec::new();
    match after {
        // Ids are length-prefixed, so no key of the family extends `after`'s key: the first key
        // past it is the key followed by a zero byte.
        Some(after) => {
            keys::relation_key(&mut start, user, kind.0, after);
            start.push(0);
        }
        None => {
            start.extend_from_slice(&prefix);
            start.push(0);
        }
    }
    let mut out = Vec::new();
    engine.scan(
        Cf::Relations,
        ScanRange {
            start: &start,
            end: end.as_deref(),
        },
        Direction::Forward,
        limit,
        &mut |key, value| {
            let mut r = KeyReader::new(key);
            r.id().map_err(bad_key(Cf::Relations))?;
            r.u8().map_err(bad_key(Cf::Relations))?;
            let other = r.user().map_err(bad_key(Cf::Relations))?;
            let rec = access::<ArchivedRelationRecord>(Cf::Relations, value)?;
            out.push(Relation {
                other,
                kind,
                since_ms: rec.since_ms.to_native(),
                note: rec.note.as_str().to_owned(),
            });
            Ok(())
        },
    )?;
    Ok(out)
}

/// One relation row at `key`: since ms and note.
pub(crate) fn relation_at(
    engine: &impl KvEngine,
    key: &[u8],
) -> Result<Option<(u64, String)>, EngineError> {
    engine
        .get_with(Cf::Relations, key, |v| {
            access::<ArchivedRelationRecord>(Cf::Relations, v)
                .map(|r| (r.since_ms.to_native(), r.note.as_str().to_owned()))
        })?
        .transpose()
}

/// Whether the user whose bare key is `user_key` accepts one-to-one messages from friends only.
pub(crate) fn friends_only_at(
    engine: &impl KvEngine,
    user_key: &[u8],
) -> Result<bool, EngineError> {
    Ok(engine
        .get_with(Cf::Relations, user_key, |v| {
            access::<ArchivedRelationSettingsRecord>(Cf::Relations, v).map(|r| r.friends_only)
        })?
        .transpose()?
        .unwrap_or(false))
}

/// Whether any key of `cf` starts with `prefix`.
pub(crate) fn any_with_prefix(
    engine: &impl KvEngine,
    cf: Cf,
    prefix: &[u8],
) -> Result<bool, EngineError> {
    Ok(scan_prefix(engine, cf, prefix, 1, &mut |_, _| Ok(()))? > 0)
}
