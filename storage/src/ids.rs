//! Identifier newtypes shared by every layer of the store: who wrote, which device, which
//! conversation, which position in a timeline.
//!
//! String ids are validated once, at construction (UTF-8, 1..=64 bytes, or a tenant-scoped id
//! of at most [`MAX_SCOPED_ID_LEN`]), so key encoding can rely on a one-byte length prefix.
//!
//! **Tenants.** A user, group, room or topic of a tenant other than the default one is held as
//! `tenant ‖ U+001F ‖ name` ([`scoped`]): every key, slot hash, registry entry and node-to-node
//! message built from the id is then the tenant's alone, and two tenants' "alice" are two users.
//! U+001F is a control character, which no plain user id may hold (SPEC.md §4) and no name a
//! client sends may hold (the node refuses it), so a plain id can never be read as another
//! tenant's and the default tenant's ids are the plain ones of before.

use std::fmt;

/// The longest user, device, group, room or topic id as named on the wire, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// The longest tenant id, in bytes.
pub const MAX_TENANT_LEN: usize = 32;

/// The longest id held in storage: a tenant, the separator and a name.
pub const MAX_SCOPED_ID_LEN: usize = MAX_TENANT_LEN + 1 + MAX_ID_LEN;

/// Separates the tenant from the name in a tenant-scoped id.
pub const TENANT_SEP: char = '\u{1f}';

/// Whether `t` is acceptable as a tenant id: 1..=32 bytes of ASCII letters, digits, `-`, `_`
/// and `.` (it is also a configuration table key and a metrics label).
pub fn valid_tenant(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= MAX_TENANT_LEN
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `name` of `tenant` as held inside the node: the name itself for the default tenant (`None`),
/// `tenant ‖ U+001F ‖ name` otherwise.
pub fn scoped(tenant: Option<&str>, name: &str) -> String {
    match tenant {
        None => name.to_owned(),
        Some(t) => {
            let mut s = String::with_capacity(t.len() + 1 + name.len());
            s.push_str(t);
            s.push(TENANT_SEP);
            s.push_str(name);
            s
        }
    }
}

/// The tenant (`None`: the default one) and the name of an id held inside the node.
pub fn split_scoped(id: &str) -> (Option<&str>, &str) {
    match id.split_once(TENANT_SEP) {
        Some((t, name)) => (Some(t), name),
        None => (None, id),
    }
}

/// The tenant of an id held inside the node (`None`: the default tenant).
pub fn tenant_of(id: &str) -> Option<&str> {
    split_scoped(id).0
}

/// Checks the length rules of an id, scoped or plain.
fn check_id(kind: &'static str, id: &str) -> Result<(), IdError> {
    let (tenant, name) = split_scoped(id);
    if name.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if name.len() > MAX_ID_LEN {
        return Err(IdError::TooLong {
            kind,
            len: name.len(),
        });
    }
    if let Some(t) = tenant {
        if !valid_tenant(t) || name.contains(TENANT_SEP) {
            return Err(IdError::Tenant { kind });
        }
    }
    Ok(())
}

/// Why a string was refused as an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Ids must not be empty.
    #[error("{kind} id is empty")]
    Empty {
        /// Which id type refused it.
        kind: &'static str,
    },
    /// Ids are at most [`MAX_ID_LEN`] bytes of UTF-8.
    #[error("{kind} id is {len} bytes long, the limit is {MAX_ID_LEN}")]
    TooLong {
        /// Which id type refused it.
        kind: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// A scoped id whose tenant part is not a valid tenant id, or with a second separator.
    #[error("{kind} id has an invalid tenant part")]
    Tenant {
        /// Which id type refused it.
        kind: &'static str,
    },
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps an id: UTF-8, 1..=[`MAX_ID_LEN`] bytes, optionally scoped
            /// by a tenant (`tenant ‖ U+001F ‖ name`, see [`scoped`]).
            pub fn new(id: impl Into<String>) -> Result<Self, IdError> {
                let id = id.into();
                check_id($kind, &id)?;
                Ok(Self(id))
            }

            /// The tenant the id belongs to (`None`: the default tenant).
            pub fn tenant(&self) -> Option<&str> {
                tenant_of(&self.0)
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:?})"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = IdError;
            fn try_from(id: &str) -> Result<Self, IdError> {
                Self::new(id)
            }
        }
    };
}

string_id!(
    /// A user, as named by the application's identity backend.
    UserId,
    "user"
);
string_id!(
    /// One of a user's devices (terminals); positions are kept per device.
    DeviceId,
    "device"
);
string_id!(
    /// A group: a conversation with a member list, owner and admins.
    GroupId,
    "group"
);
string_id!(
    /// A chat room: large, ephemeral membership, read diffusion.
    RoomId,
    "room"
);
string_id!(
    /// A topic: publish/subscribe conversation.
    TopicId,
    "topic"
);

/// A position in a timeline (a conversation's storage timeline or a user's inbox).
///
/// Sequences start at 1 and are strictly increasing per timeline; `Seq::ZERO` means "before
/// everything" when used as a cursor.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Seq(pub u64);

impl Seq {
    /// Before the first entry of every timeline.
    pub const ZERO: Seq = Seq(0);
    /// After the last possible entry.
    pub const MAX: Seq = Seq(u64::MAX);

    /// The sequence after this one.
    pub fn next(self) -> Seq {
        Seq(self.0.saturating_add(1))
    }
}

impl fmt::Debug for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Seq({})", self.0)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The id a client gives a message before sending it; retransmissions reuse it, and the store
/// de-duplicates on (sender, client message id).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientMsgId(pub [u8; 16]);

impl fmt::Debug for ClientMsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientMsgId(")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        f.write_str(")")
    }
}

/// Declares a `u8` newtype with named values; `Debug` prints the name, or the number for a value
/// this version does not name (values survive a decode so tools can show them).
macro_rules! named_u8 {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$cmeta:meta])* $konst:ident = $val:literal ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub u8);

        impl $name {
            $( $(#[$cmeta])* pub const $konst: $name = $name($val); )*
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match self.0 {
                    $( $val => f.write_str(stringify!($konst)), )*
                    other => write!(f, concat!(stringify!($name), "({:#04x})"), other),
                }
            }
        }
    };
}

pub(crate) use named_u8;

named_u8! {
    /// The kind byte of a conversation key. Unknown values survive a decode so a dump tool can print
    /// them.
    pub struct ConvKind {
        /// One-to-one conversation.
        DIRECT = 1,
        /// Group conversation.
        GROUP = 2,
        /// Chat room.
        ROOM = 3,
        /// Topic.
        TOPIC = 4,
    }
}

/// The two users of a one-to-one conversation, in canonical order (smaller id first), so both
/// sides name the same timeline.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct DirectPair {
    low: UserId,
    high: UserId,
}

impl DirectPair {
    /// The pair of `a` and `b`, in whichever order they are given.
    pub fn new(a: UserId, b: UserId) -> Self {
        if a <= b {
            DirectPair { low: a, high: b }
        } else {
            DirectPair { low: b, high: a }
        }
    }

    /// The smaller user id.
    pub fn low(&self) -> &UserId {
        &self.low
    }

    /// The larger user id (equal to `low` for a conversation with oneself).
    pub fn high(&self) -> &UserId {
        &self.high
    }

    /// The other participant, if `me` is one of the two.
    pub fn peer_of(&self, me: &UserId) -> Option<&UserId> {
        if *me == self.low {
            Some(&self.high)
        } else if *me == self.high {
            Some(&self.low)
        } else {
            None
        }
    }
}

/// Which conversation a timeline belongs to: kind + id.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum ConvKey {
    /// One-to-one: the canonical pair of users.
    Direct(DirectPair),
    /// A group.
    Group(GroupId),
    /// A chat room.
    Room(RoomId),
    /// A topic.
    Topic(TopicId),
}

impl ConvKey {
    /// The one-to-one conversation between `a` and `b` (order does not matter).
    pub fn direct(a: &UserId, b: &UserId) -> Self {
        ConvKey::Direct(DirectPair::new(a.clone(), b.clone()))
    }

    /// The kind byte stored in keys.
    pub fn kind(&self) -> ConvKind {
        match self {
            ConvKey::Direct(_) => ConvKind::DIRECT,
            ConvKey::Group(_) => ConvKind::GROUP,
            ConvKey::Room(_) => ConvKind::ROOM,
            ConvKey::Topic(_) => ConvKind::TOPIC,
        }
    }
}

named_u8! {
    /// The kind of a stored message, with the wire's numbering (SPEC.md, Message kinds): content
    /// kinds are below 0x40; system event kinds (recall, group events) are 0x40 and above and never
    /// count as unread.
    pub struct MessageKind {
        /// Plain text.
        TEXT = 1,
        /// Emoji / sticker.
        EMOJI = 2,
        /// Image reference.
        IMAGE = 3,
        /// Audio reference.
        AUDIO = 4,
        /// Video reference.
        VIDEO = 5,
        /// File reference.
        FILE = 6,
        /// Location.
        LOCATION = 7,
        /// Application-defined payload.
        CUSTOM = 8,
        /// Event: the message whose conversation seq is in the body (8 bytes, big-endian) was
        /// recalled.
        RECALL_EVENT = 0x40,
        /// Event: a change to a group (membership, settings), in the group's timeline.
        GROUP_EVENT = 0x41,
    }
}

impl MessageKind {
    /// Events are timeline entries that are not content (they never count as unread).
    pub fn is_event(self) -> bool {
        self.0 >= 0x40
    }
}

/// Flag bits of a stored message.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MessageFlags(pub u8);

impl MessageFlags {
    /// No flag set.
    pub const NONE: MessageFlags = MessageFlags(0);
    /// The sender recalled the message; its body is kept (for audit) but must not be shown.
    pub const RECALLED: MessageFlags = MessageFlags(0x01);
    /// Stored by read diffusion (a group above the write-diffusion size): no inbox entry refers
    /// to it, SYNC serves it from the group's timeline. Never leaves storage (readers clear it).
    pub const READ_DIFFUSED: MessageFlags = MessageFlags(0x80);
    /// The bits that never leave storage.
    pub const STORAGE_ONLY: MessageFlags = MessageFlags(0x80);

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: MessageFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl fmt::Debug for MessageFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageFlags({:#04x})", self.0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ids_are_validated() {
        assert_eq!(UserId::new(""), Err(IdError::Empty { kind: "user" }));
        assert!(UserId::new("a".repeat(64)).is_ok());
        assert_eq!(
            DeviceId::new("d".repeat(65)),
            Err(IdError::TooLong {
                kind: "device",
                len: 65
            })
        );
    }

    #[test]
    fn scoped_ids() {
        let a = UserId::new(scoped(Some("acme"), "alice")).unwrap();
        assert_eq!(a.as_str(), "acme\u{1f}alice");
        assert_eq!(a.tenant(), Some("acme"));
        assert_eq!(split_scoped(a.as_str()), (Some("acme"), "alice"));
        assert_ne!(a, UserId::new("alice").unwrap());
        assert_eq!(UserId::new("alice").unwrap().tenant(), None);
        assert_eq!(scoped(None, "alice"), "alice");
        // The name part keeps the 64-byte limit; the whole id may be longer.
        let long = scoped(Some(&"t".repeat(32)), &"n".repeat(64));
        assert_eq!(long.len(), MAX_SCOPED_ID_LEN);
        assert!(UserId::new(long).is_ok());
        assert!(UserId::new(scoped(Some("acme"), &"n".repeat(65))).is_err());
        assert!(UserId::new(scoped(Some("acme"), "")).is_err());
        assert!(UserId::new("\u{1f}alice").is_err());
        assert!(UserId::new("a b\u{1f}alice").is_err());
        assert!(UserId::new("acme\u{1f}x\u{1f}alice").is_err());
        assert!(valid_tenant("acme-1.eu_2"));
        assert!(!valid_tenant("") && !valid_tenant(&"t".repeat(33)) && !valid_tenant("a/b"));
    }

    #[test]
    fn direct_key_is_canonical() {
        let a = UserId::new("alice").unwrap();
        let b = UserId::new("bob").unwrap();
        assert_eq!(ConvKey::direct(&a, &b), ConvKey::direct(&b, &a));
        let ConvKey::Direct(pair) = ConvKey::direct(&b, &a) else {
            panic!("not direct")
        };
        assert_eq!(pair.low(), &a);
        assert_eq!(pair.peer_of(&a), Some(&b));
        assert_eq!(pair.peer_of(&UserId::new("carol").unwrap()), None);
    }
}
