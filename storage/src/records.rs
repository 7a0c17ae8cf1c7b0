//! Stored values: rkyv 0.8 archives, one record type per column family.
//!
//! rkyv is built with its `unaligned` format feature, so every archived type has alignment 1
//! (asserted below at compile time) and `rkyv::access` validates and reads a value in place from
//! whatever slice RocksDB pins, at any address. With rkyv's default aligned format a pinned slice
//! (an arbitrary offset inside a block or memtable entry) would have to be copied into an
//! `AlignedVec` before every access. Values are serialized straight into the write batch's buffer.

use rkyv::api::high::{HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::with::{AsString, AsVec};
use rkyv::{Archive, Portable, Serialize};

use crate::engine::{Cf, EngineError};
use crate::ids::{ClientMsgId, ConvKey, DeviceId, MessageFlags, MessageKind, Seq, UserId};
use crate::keys::KeyReader;
use crate::types::StoredMessage;

/// Current schema version, stored in `meta`. Bump when a layout changes incompatibly.
pub const SCHEMA_VERSION: u32 = 1;

/// `messages` value.
#[derive(Archive, Serialize, Debug, Clone, PartialEq)]
pub(crate) struct MessageRecord {
    pub sender: String,
    pub sender_device: String,
    pub client_msg_id: [u8; 16],
    pub time_ms: u64,
    pub kind: u8,
    pub flags: u8,
    pub body: Vec<u8>,
}

/// A [`MessageRecord`] built from borrowed parts, so the write path serializes the sender,
/// device and body where they lie instead of copying them into owned fields first. Its archive
/// has the same fields of the same archived types in the same order (both `repr(C)`), so it is
/// byte for byte a [`MessageRecord`] archive (checked below and in the tests).
#[derive(Archive, Serialize)]
pub(crate) struct MessageRecordRef<'a> {
    #[rkyv(with = AsString)]
    pub sender: &'a str,
    #[rkyv(with = AsString)]
    pub sender_device: &'a str,
    pub client_msg_id: [u8; 16],
    pub time_ms: u64,
    pub kind: u8,
    pub flags: u8,
    #[rkyv(with = AsVec)]
    pub body: &'a [u8],
}

/// `inbox` value: a reference to a message, not a copy of it.
// Written as `InboxRecordRef`; this type names the archive readers validate.
#[allow(dead_code)]
#[derive(Archive, Serialize, Debug, Clone, PartialEq)]
pub(crate) struct InboxRecord {
    /// Encoded conversation key.
    pub conv: Vec<u8>,
    pub conv_seq: u64,
    pub time_ms: u64,
}

/// An [`InboxRecord`] built from a borrowed conversation key; same archive, as for
/// [`MessageRecordRef`].
#[derive(Archive, Serialize)]
pub(crate) struct InboxRecordRef<'a> {
    #[rkyv(with = AsVec)]
    pub conv: &'a [u8],
    pub conv_seq: u64,
    pub time_ms: u64,
}

/// `inbox` value under the bare user key: the last inbox seq ever assigned, so sequences are not
/// reused after every entry of an inbox has expired.
#[derive(Archive, Serialize, Debug, Clone, PartialEq)]
pub(crate) struct InboxHeadRecord {
    pub last_seq: u64,
}

/// `positions` value.
#[derive(Archive, Serialize, Debug, Clone, PartialEq)]
pub(crate) struct PositionRecord {
    pub pulled: u64,
    pub acked: u64,
    pub read: u64,
    pub updated_ms: u64,
}

/// `dedup` value: what the first transmission was assigned.
// Written as `DedupRecordRef`; this type names the archive readers validate.
#[allow(dead_code)]
#[derive(Archive, Serialize, Debug, Clone, PartialEq)]
pub(crate) struct DedupRecord {
    /// Encoded conversation key.
    pub conv: Vec<u8>,
    pub conv_seq: u64,
    pub sender_inbox_seq: u64,
    pub recipient_inbox_seq: u64,
    pub time_ms: u64,
}

/// A [`DedupRecord`] built from a borrowed conversation key; same archive, as for
/// [`MessageRecordRef`].
#[derive(Archive, Serialize)]
pub(crate) struct DedupRecordRef<'a> {
    #[rkyv(with = AsVec)]
    pub conv: &'a [u8],
    pub conv_seq: u64,
    pub sender_inbox_seq: u64,
    pub recipient_inbox_seq: u64,
    pub time_ms: u64,
}

/// `recent` value under `user ‖ conv`.
#[derive(Archive, Serialize, Debug, Clone, PartialEq)]
pub(crate) struct RecentRecord {
    pub last_seq: u64,
    pub last_time_ms: u64,
    pub unread: u32,
    pub read_seq: u64,
    pub mentioned: bool,
    pub updated_ms: u64,
}

/// `recent` value under the bare user key.
#[derive(Archive, Serialize, Debug, Clone, PartialEq)]
pub(crate) struct TotalUnreadRecord {
    pub total: u64,
}

/// `groups` value.
#[derive(Archive, Serialize, Debug, Clone, PartialEq)]
pub(crate) struct GroupRecord {
    pub name: String,
    pub announcement: String,
    pub avatar: String,
    pub owner: String,
    pub settings: u64,
    pub diffusion: u8,
    pub member_count: u32,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// First conversation seq stored under the current diffusion mode (the seq of the event
    /// whose membership change switched it; 0 for a group that never switched).
    pub mode_since: u64,
    /// Last seq stored under read diffusion before the group last switched to write diffusion
    /// (0: none). SYNC still serves read-diffused messages up to it to devices behind.
    pub read_until: u64,
}

/// `members` value.
#[derive(Archive, Serialize, Debug, Clone, PartialEq)]
pub(crate) struct MemberRecord {
    pub role: u8,
    pub muted_until_ms: u64,
    pub joined_ms: u64,
}

/// `member_of` value.
#[derive(Archive, Serialize, Debug, Clone, PartialEq)]
pub(crate) struct MemberOfRecord {
    pub role: u8,
    pub joined_ms: u64,
}

/// `cursors` value.
#[derive(Archive, Serialize, Debug, Clone, PartialEq)]
pub(crate) struct CursorRecord {
    pub acked: u64,
    pub read: u64,
    pub updated_ms: u64,
    /// The group's last seq before the member (last) joined: a device that never synced the
    /// group starts after it. Under `group ‖ user ‖ device` keys (a device's SYNC position in a
    /// group) it is 0 and `acked` is the position.
    pub since: u64,
}

/// `topics` value of a topic's row (`01 ‖ id(topic)`).
#[derive(Archive, Serialize, Debug, Clone, PartialEq)]
pub(crate) struct TopicRecord {
    pub subscribers: u32,
    pub created_ms: u64,
    pub updated_ms: u64,
}

/// `topics` value of a subscription, under both `02 ‖ id(topic) ‖ id(user)` and
/// `03 ‖ id(user) ‖ id(topic)` (the read position is kept in the second only).
#[derive(Archive, Serialize, Debug, Clone, PartialEq)]
pub(crate) struct SubscriptionRecord {
    /// The topic's last seq when the user subscribed: SYNC serves what comes after it.
    pub since: u64,
    /// The user's read position.
    pub read: u64,
    pub subscribed_ms: u64,
    pub updated_ms: u64,
}

/// `relations` value.
#[derive(Archive, Serialize, Debug, Clone, PartialEq)]
pub(crate) struct RelationRecord {
    pub since_ms: u64,
    /// The friend request's note on `PENDING` and `REQUESTED` rows; empty otherwise.
    pub note: String,
}

/// `relations` value under the bare `id(user)` key: the user's relation settings.
#[derive(Archive, Serialize, Debug, Clone, PartialEq)]
pub(crate) struct RelationSettingsRecord {
    /// Only friends may send the user one-to-one messages.
    pub friends_only: bool,
    pub updated_ms: u64,
}

/// `meta` value under `schema_version`.
#[derive(Archive, Serialize, Debug, Clone, PartialEq)]
pub(crate) struct SchemaRecord {
    pub version: u32,
}

/// `meta` value under `node_id`.
#[derive(Archive, Serialize, Debug, Clone, PartialEq)]
pub(crate) struct NodeRecord {
    pub id: String,
}

// If the `unaligned` feature were lost (or another crate forced `aligned`), in-place access to
// pinned slices would start failing at run time; fail the build instead.
const _: () = {
    use std::mem::align_of;
    assert!(align_of::<ArchivedMessageRecord>() == 1);
    assert!(align_of::<ArchivedInboxRecord>() == 1);
    assert!(align_of::<ArchivedInboxHeadRecord>() == 1);
    assert!(align_of::<ArchivedPositionRecord>() == 1);
    assert!(align_of::<ArchivedDedupRecord>() == 1);
    assert!(align_of::<ArchivedRecentRecord>() == 1);
    assert!(align_of::<ArchivedTotalUnreadRecord>() == 1);
    assert!(align_of::<ArchivedGroupRecord>() == 1);
    assert!(align_of::<ArchivedMemberRecord>() == 1);
    assert!(align_of::<ArchivedMemberOfRecord>() == 1);
    assert!(align_of::<ArchivedCursorRecord>() == 1);
    assert!(align_of::<ArchivedTopicRecord>() == 1);
    assert!(align_of::<ArchivedSubscriptionRecord>() == 1);
    assert!(align_of::<ArchivedRelationRecord>() == 1);
    assert!(align_of::<ArchivedRelationSettingsRecord>() == 1);
    assert!(align_of::<ArchivedSchemaRecord>() == 1);
    assert!(align_of::<ArchivedNodeRecord>() == 1);
    use std::mem::size_of;
    assert!(size_of::<ArchivedMessageRecordRef<'static>>() == size_of::<ArchivedMessageRecord>());
    assert!(size_of::<ArchivedInboxRecordRef<'static>>() == size_of::<ArchivedInboxRecord>());
    assert!(size_of::<ArchivedDedupRecordRef<'static>>() == size_of::<ArchivedDedupRecord>());
};

/// Appends the archive of `value` to `out`. The archive is self-contained (relative pointers, root
/// at its end), so the appended bytes are a valid value wherever they start.
pub(crate) fn encode<T>(out: &mut Vec<u8>, value: &T) -> Result<(), EngineError>
where
    T: for<'a, 'b> Serialize<HighSerializer<&'b mut Vec<u8>, ArenaHandle<'a>, rancor::Error>>,
{
    rkyv::api::high::to_bytes_in::<_, rancor::Error>(value, out)
        .map(|_| ())
        .map_err(|e| EngineError::BadRecord {
            family: Cf::Meta,
            detail: format!("encode: {e}"),
        })
}

/// Validates `bytes` as an archived `A` and returns a reference into them (no copy).
pub(crate) fn access<A>(cf: Cf, bytes: &[u8]) -> Result<&A, EngineError>
where
    A: Portable + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
{
    rkyv::access::<A, rancor::Error>(bytes).map_err(|e| EngineError::BadRecord {
        family: cf,
        detail: e.to_string(),
    })
}

pub(crate) fn bad(cf: Cf, detail: impl std::fmt::Display) -> EngineError {
    EngineError::BadRecord {
        family: cf,
        detail: detail.to_string(),
    }
}

/// Expiry time of an `inbox` entry; the head row (bare user key) never expires, and neither does
/// anything undecodable (it is reported on read instead of silently dropped).
pub(crate) fn inbox_time_of(key: &[u8], value: &[u8]) -> Option<u64> {
    let mut r = KeyReader::new(key);
    r.id().ok()?;
    if r.is_empty() {
        return None;
    }
    access::<ArchivedInboxRecord>(Cf::Inbox, value)
        .ok()
        .map(|rec| rec.time_ms.to_native())
}

/// Expiry time of a `dedup` entry.
pub(crate) fn dedup_time_of(_key: &[u8], value: &[u8]) -> Option<u64> {
    access::<ArchivedDedupRecord>(Cf::Dedup, value)
        .ok()
        .map(|rec| rec.time_ms.to_native())
}

/// Builds the caller-facing message from a `messages` entry.
pub(crate) fn stored_message(
    conv: ConvKey,
    seq: Seq,
    rec: &ArchivedMessageRecord,
) -> Result<StoredMessage, EngineError> {
    Ok(StoredMessage {
        conv,
        seq,
        sender: UserId::new(rec.sender.as_str()).map_err(|e| bad(Cf::Messages, e))?,
        sender_device: DeviceId::new(rec.sender_device.as_str())
            .map_err(|e| bad(Cf::Messages, e))?,
        client_msg_id: ClientMsgId(rec.client_msg_id),
        time_ms: rec.time_ms.to_native(),
        kind: MessageKind(rec.kind),
        // Storage-only bits stay in storage.
        flags: MessageFlags(rec.flags & !MessageFlags::STORAGE_ONLY.0),
        body: rec.body.as_slice().to_vec(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn access_in_place_at_any_offset() {
        let rec = MessageRecord {
            sender: "alice".into(),
            sender_device: "phone-with-a-long-name".into(),
            client_msg_id: [7; 16],
            time_ms: 1_700_000_000_123,
            kind: 1,
            flags: 0,
            body: b"hello there, this body is longer than inline".to_vec(),
        };
        // Encode after a prefix of every length 0..8 so the archive starts at every alignment.
        for pad in 0..8 {
            let mut buf = vec![0xAA; pad];
            encode(&mut buf, &rec).unwrap();
            let archived = access::<ArchivedMessageRecord>(Cf::Messages, &buf[pad..]).unwrap();
            assert_eq!(archived.sender.as_str(), "alice");
            assert_eq!(archived.time_ms.to_native(), 1_700_000_000_123);
            assert_eq!(archived.body.as_slice(), rec.body.as_slice());
        }
    }

    #[test]
    fn borrowed_records_archive_like_owned_ones() {
        let owned = MessageRecord {
            sender: "alice".into(),
            sender_device: "a-device-name-longer-than-inline".into(),
            client_msg_id: [3; 16],
            time_ms: 1_700_000_000_123,
            kind: 1,
            flags: 2,
            body: b"body bytes".to_vec(),
        };
        let borrowed = MessageRecordRef {
            sender: &owned.sender,
            sender_device: &owned.sender_device,
            client_msg_id: owned.client_msg_id,
            time_ms: owned.time_ms,
            kind: owned.kind,
            flags: owned.flags,
            body: &owned.body,
        };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        encode(&mut a, &owned).unwrap();
        encode(&mut b, &borrowed).unwrap();
        assert_eq!(a, b);

        let conv = [1, 1, b'a', 1, b'b'];
        let owned = InboxRecord {
            conv: conv.to_vec(),
            conv_seq: 9,
            time_ms: 10,
        };
        let borrowed = InboxRecordRef {
            conv: &conv,
            conv_seq: 9,
            time_ms: 10,
        };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        encode(&mut a, &owned).unwrap();
        encode(&mut b, &borrowed).unwrap();
        assert_eq!(a, b);

        let owned = DedupRecord {
            conv: conv.to_vec(),
            conv_seq: 9,
            sender_inbox_seq: 4,
            recipient_inbox_seq: 5,
            time_ms: 10,
        };
        let borrowed = DedupRecordRef {
            conv: &conv,
            conv_seq: 9,
            sender_inbox_seq: 4,
            recipient_inbox_seq: 5,
            time_ms: 10,
        };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        encode(&mut a, &owned).unwrap();
        encode(&mut b, &borrowed).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(access::<ArchivedMessageRecord>(Cf::Messages, &[1, 2, 3]).is_err());
        assert!(access::<ArchivedInboxRecord>(Cf::Inbox, &[0xFF; 40]).is_err());
    }
}
