//! Key encodings for every column family (the layouts are tabulated in the crate docs).
//!
//! Variable-length ids are written as one length byte followed by the UTF-8 bytes, so an id can
//! never be a prefix of another id's encoding; sequence numbers are 8 bytes big-endian, so byte
//! order is numeric order and a range scan walks a timeline in sequence order.

use crate::ids::{
    ClientMsgId, ConvKey, ConvKind, DeviceId, DirectPair, GroupId, RoomId, Seq, TopicId, UserId,
};

/// A key that does not follow its family's layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed key: {0}")]
pub struct KeyError(pub &'static str);

/// Meta family keys.
pub(crate) const META_SCHEMA_VERSION: &[u8] = b"schema_version";
pub(crate) const META_NODE_ID: &[u8] = b"node_id";

pub(crate) fn put_id(out: &mut Vec<u8>, id: &str) {
    debug_assert!(!id.is_empty() && id.len() <= crate::ids::MAX_SCOPED_ID_LEN);
    // Ids are validated to at most 97 bytes (a tenant-scoped id) at construction, so the length
    // fits one byte.
    out.push(id.len() as u8);
    out.extend_from_slice(id.as_bytes());
}

pub(crate) fn put_seq(out: &mut Vec<u8>, seq: Seq) {
    out.extend_from_slice(&seq.0.to_be_bytes());
}

/// `kind u8 ‖ id` (direct: `1 ‖ low ‖ high`).
pub(crate) fn put_conv(out: &mut Vec<u8>, conv: &ConvKey) {
    out.push(conv.kind().0);
    match conv {
        ConvKey::Direct(pair) => {
            put_id(out, pair.low().as_str());
            put_id(out, pair.high().as_str());
        }
        ConvKey::Group(id) => put_id(out, id.as_str()),
        ConvKey::Room(id) => put_id(out, id.as_str()),
        ConvKey::Topic(id) => put_id(out, id.as_str()),
    }
}

// Every key builder clears `out`, writes the key into it and returns it: the write path builds
// all its keys into one reused buffer instead of allocating one per row.

/// `messages`: `conv ‖ seq`.
pub(crate) fn message_key<'b>(out: &'b mut Vec<u8>, conv: &ConvKey, seq: Seq) -> &'b [u8] {
    out.clear();
    put_conv(out, conv);
    put_seq(out, seq);
    out
}

/// `messages` prefix of the one-to-one conversation of `a` and `b` (either order): the same
/// bytes as [`conv_prefix`] of [`ConvKey::direct`], without building the key.
pub(crate) fn direct_prefix<'b>(out: &'b mut Vec<u8>, a: &UserId, b: &UserId) -> &'b [u8] {
    let (low, high) = if a <= b { (a, b) } else { (b, a) };
    out.clear();
    out.push(ConvKind::DIRECT.0);
    put_id(out, low.as_str());
    put_id(out, high.as_str());
    out
}

/// `messages` prefix of one conversation.
pub(crate) fn conv_prefix<'b>(out: &'b mut Vec<u8>, conv: &ConvKey) -> &'b [u8] {
    out.clear();
    put_conv(out, conv);
    out
}

/// `inbox`: `user ‖ seq`.
pub(crate) fn inbox_key<'b>(out: &'b mut Vec<u8>, user: &UserId, seq: Seq) -> &'b [u8] {
    out.clear();
    put_id(out, user.as_str());
    put_seq(out, seq);
    out
}

/// The bare `user` key: the inbox head row, the total-unread row in `recent`, and the prefix of
/// everything a user owns in `inbox`, `positions`, `recent`, `member_of` and `relations`.
pub(crate) fn user_key<'b>(out: &'b mut Vec<u8>, user: &UserId) -> &'b [u8] {
    out.clear();
    put_id(out, user.as_str());
    out
}

/// `positions`: `user ‖ device`.
pub(crate) fn position_key<'b>(out: &'b mut Vec<u8>, user: &UserId, device: &DeviceId) -> &'b [u8] {
    out.clear();
    put_id(out, user.as_str());
    put_id(out, device.as_str());
    out
}

/// `dedup`: `sender ‖ client msg id (16 bytes)`.
pub(crate) fn dedup_key<'b>(out: &'b mut Vec<u8>, sender: &UserId, id: ClientMsgId) -> &'b [u8] {
    out.clear();
    put_id(out, sender.as_str());
    out.extend_from_slice(&id.0);
    out
}

/// `recent`: `user ‖ conv`.
pub(crate) fn recent_key<'b>(out: &'b mut Vec<u8>, user: &UserId, conv: &ConvKey) -> &'b [u8] {
    out.clear();
    put_id(out, user.as_str());
    put_conv(out, conv);
    out
}

/// `groups`: `group`; also the prefix of a group's `members` and `cursors`.
pub(crate) fn group_key<'b>(out: &'b mut Vec<u8>, group: &GroupId) -> &'b [u8] {
    out.clear();
    put_id(out, group.as_str());
    out
}

/// `members` and `cursors`: `group ‖ user`.
pub(crate) fn member_key<'b>(out: &'b mut Vec<u8>, group: &GroupId, user: &UserId) -> &'b [u8] {
    out.clear();
    put_id(out, group.as_str());
    put_id(out, user.as_str());
    out
}

/// `member_of`: `user ‖ group`.
pub(crate) fn member_of_key<'b>(out: &'b mut Vec<u8>, user: &UserId, group: &GroupId) -> &'b [u8] {
    out.clear();
    put_id(out, user.as_str());
    put_id(out, group.as_str());
    out
}

/// `relations`: `user ‖ kind ‖ other`.
pub(crate) fn relation_key<'b>(
    out: &'b mut Vec<u8>,
    user: &UserId,
    kind: u8,
    other: &UserId,
) -> &'b [u8] {
    out.clear();
    put_id(out, user.as_str());
    out.push(kind);
    put_id(out, other.as_str());
    out
}

/// `relations` prefix of one user's relations of one kind.
pub(crate) fn relation_prefix<'b>(out: &'b mut Vec<u8>, user: &UserId, kind: u8) -> &'b [u8] {
    out.clear();
    put_id(out, user.as_str());
    out.push(kind);
    out
}

/// The smallest key greater than every key that starts with `prefix`, or `None` when no such key
/// exists (the prefix is all 0xFF).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last != 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Reads the parts of a key back, front to back.
#[derive(Debug)]
pub(crate) struct KeyReader<'a> {
    rest: &'a [u8],
}

impl<'a> KeyReader<'a> {
    pub(crate) fn new(key: &'a [u8]) -> Self {
        KeyReader { rest: key }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], KeyError> {
        if self.rest.len() < n {
            return Err(KeyError(what));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, KeyError> {
        Ok(self.take(1, "truncated byte")?[0])
    }

    pub(crate) fn id(&mut self) -> Result<&'a str, KeyError> {
        let len = self.u8()? as usize;
        let bytes = self.take(len, "truncated id")?;
        std::str::from_utf8(bytes).map_err(|_| KeyError("id is not UTF-8"))
    }

    pub(crate) fn user(&mut self) -> Result<UserId, KeyError> {
        UserId::new(self.id()?).map_err(|_| KeyError("invalid user id"))
    }

    pub(crate) fn device(&mut self) -> Result<DeviceId, KeyError> {
        DeviceId::new(self.id()?).map_err(|_| KeyError("invalid device id"))
    }

    pub(crate) fn group(&mut self) -> Result<GroupId, KeyError> {
        GroupId::new(self.id()?).map_err(|_| KeyError("invalid group id"))
    }

    pub(crate) fn seq(&mut self) -> Result<Seq, KeyError> {
        let bytes = self.take(8, "truncated sequence")?;
        let mut be = [0u8; 8];
        be.copy_from_slice(bytes);
        Ok(Seq(u64::from_be_bytes(be)))
    }

    pub(crate) fn conv(&mut self) -> Result<ConvKey, KeyError> {
        let kind = ConvKind(self.u8()?);
        let bad = |_| KeyError("invalid conversation id");
        Ok(match kind {
            ConvKind::DIRECT => {
                let low = UserId::new(self.id()?).map_err(bad)?;
                let high = UserId::new(self.id()?).map_err(bad)?;
                if low > high {
                    return Err(KeyError("direct conversation key is not canonical"));
                }
                ConvKey::Direct(DirectPair::new(low, high))
            }
            ConvKind::GROUP => ConvKey::Group(GroupId::new(self.id()?).map_err(bad)?),
            ConvKind::ROOM => ConvKey::Room(RoomId::new(self.id()?).map_err(bad)?),
            ConvKind::TOPIC => ConvKey::Topic(TopicId::new(self.id()?).map_err(bad)?),
            _ => return Err(KeyError("unknown conversation kind")),
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    pub(crate) fn finish(self) -> Result<(), KeyError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(KeyError("trailing bytes"))
        }
    }
}

/// Decodes a stored conversation key (as kept in inbox and dedup values).
pub(crate) fn decode_conv(bytes: &[u8]) -> Result<ConvKey, KeyError> {
    let mut r = KeyReader::new(bytes);
    let conv = r.conv()?;
    r.finish()?;
    Ok(conv)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn user(s: &str) -> UserId {
        UserId::new(s).unwrap()
    }

    #[test]
    fn prefix_end_skips_ff() {
        assert_eq!(prefix_end(&[1, 2]), Some(vec![1, 3]));
        assert_eq!(prefix_end(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xFF, 0xFF]), None);
    }

    #[test]
    fn conv_roundtrip() {
        let mut buf = Vec::new();
        for conv in [
            ConvKey::direct(&user("zed"), &user("amy")),
            ConvKey::Group(GroupId::new("g1").unwrap()),
            ConvKey::Room(RoomId::new("lobby").unwrap()),
            ConvKey::Topic(TopicId::new("news").unwrap()),
        ] {
            buf.clear();
            put_conv(&mut buf, &conv);
            assert_eq!(decode_conv(&buf).unwrap(), conv);
        }
    }

    proptest! {
        // Sequence order must be key order within a timeline, for every pair of sequences.
        #[test]
        fn seq_order_is_key_order(a in any::<u64>(), b in any::<u64>(), id in "[a-z]{1,64}") {
            let u = UserId::new(id).unwrap();
            let ka = inbox_key(&mut Vec::new(), &u, Seq(a)).to_vec();
            let kb = inbox_key(&mut Vec::new(), &u, Seq(b)).to_vec();
            prop_assert_eq!(a.cmp(&b), ka.cmp(&kb));
        }

        // No user's inbox range may contain another user's entries (no prefix collisions).
        #[test]
        fn user_prefixes_do_not_collide(a in "[a-z]{1,8}", b in "[a-z]{1,8}", seq in any::<u64>()) {
            prop_assume!(a != b);
            let (ua, ub) = (UserId::new(a).unwrap(), UserId::new(b).unwrap());
            let prefix = user_key(&mut Vec::new(), &ua).to_vec();
            let other = inbox_key(&mut Vec::new(), &ub, Seq(seq)).to_vec();
            prop_assert!(!other.starts_with(&prefix));
        }
    }
}
