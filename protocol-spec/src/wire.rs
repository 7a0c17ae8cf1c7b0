//! Primitive encodings of SPEC.md §3: fixed little-endian integers, LEB128 varints, bools,
//! strings, byte strings, lists and options, plus the [`Wire`] trait every body field implements.
//!
//! Decoding borrows from the input buffer (`Cow::Borrowed`), so parsing a frame never copies a
//! string or a body; encoding appends to a caller-owned `Vec<u8>` that is reused across frames.

use std::borrow::Cow;

/// Why a body could not be parsed; `offset` is relative to the start of the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyError {
    pub reason: &'static str,
    pub offset: usize,
}

/// A cursor over a frame body.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn fail<T>(&self, reason: &'static str) -> Result<T, BodyError> {
        Err(BodyError {
            reason,
            offset: self.pos,
        })
    }

    #[inline]
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], BodyError> {
        match self.buf.get(self.pos..self.pos.wrapping_add(n)) {
            Some(s) if self.pos.checked_add(n).is_some() => {
                self.pos += n;
                Ok(s)
            }
            _ => self.fail("body ends inside a field"),
        }
    }

    #[inline]
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], BodyError> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    //= SPEC.md#varint
    //# A varint is unsigned LEB128 of a value below 2^64, at most 10 bytes, and MUST be minimal.
    #[inline]
    pub fn varint(&mut self) -> Result<u64, BodyError> {
        // Most varints on the wire (lengths, kinds, small counts) are one byte.
        if let Some(&b) = self.buf.get(self.pos) {
            if b < 0x80 {
                self.pos += 1;
                return Ok(u64::from(b));
            }
        }
        self.varint_slow()
    }

    #[inline(never)]
    fn varint_slow(&mut self) -> Result<u64, BodyError> {
        let start = self.pos;
        let mut value: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                self.pos = start;
                return self.fail("body ends inside a varint");
            };
            self.pos += 1;
            if i == 9 && b > 1 {
                self.pos = start;
                return self.fail("varint overflows 64 bits");
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                if b == 0 && i > 0 {
                    self.pos = start;
                    return self.fail("varint is not minimal");
                }
                return Ok(value);
            }
        }
        self.pos = start;
        self.fail("varint longer than 10 bytes")
    }

    /// A length or count that must fit in what is left of the body.
    #[inline]
    pub fn length(&mut self) -> Result<usize, BodyError> {
        let n = self.varint()?;
        if n > self.remaining() as u64 {
            return self.fail("length exceeds the rest of the body");
        }
        Ok(n as usize)
    }
}

/// Appends a minimal LEB128 varint.
#[inline]
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    if v < 0x80 {
        out.push(v as u8);
        return;
    }
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Number of bytes `put_varint` writes for `v`.
pub fn varint_len(v: u64) -> usize {
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// A value with a wire encoding (SPEC.md §3).
pub trait Wire<'a>: Sized {
    fn put(&self, out: &mut Vec<u8>);
    fn get(r: &mut Reader<'a>) -> Result<Self, BodyError>;
}

impl<'a> Wire<'a> for u8 {
    #[inline]
    fn put(&self, out: &mut Vec<u8>) {
        out.push(*self);
    }
    #[inline]
    fn get(r: &mut Reader<'a>) -> Result<Self, BodyError> {
        Ok(r.array::<1>()?[0])
    }
}

impl<'a> Wire<'a> for u16 {
    #[inline]
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    #[inline]
    fn get(r: &mut Reader<'a>) -> Result<Self, BodyError> {
        Ok(u16::from_le_bytes(r.array()?))
    }
}

impl<'a> Wire<'a> for u32 {
    #[inline]
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    #[inline]
    fn get(r: &mut Reader<'a>) -> Result<Self, BodyError> {
        Ok(u32::from_le_bytes(r.array()?))
    }
}

/// `u64` fields (sequences, times, counts, ids) are varints on the wire.
impl<'a> Wire<'a> for u64 {
    #[inline]
    fn put(&self, out: &mut Vec<u8>) {
        put_varint(out, *self);
    }
    #[inline]
    fn get(r: &mut Reader<'a>) -> Result<Self, BodyError> {
        r.varint()
    }
}

impl<'a> Wire<'a> for bool {
    #[inline]
    fn put(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
    #[inline]
    fn get(r: &mut Reader<'a>) -> Result<Self, BodyError> {
        match r.array::<1>()?[0] {
            0 => Ok(false),
            1 => Ok(true),
            _ => r.fail("bool is neither 0 nor 1"),
        }
    }
}

impl<'a> Wire<'a> for Cow<'a, [u8]> {
    #[inline]
    fn put(&self, out: &mut Vec<u8>) {
        put_varint(out, self.len() as u64);
        out.extend_from_slice(self);
    }
    #[inline]
    fn get(r: &mut Reader<'a>) -> Result<Self, BodyError> {
        let n = r.length()?;
        Ok(Cow::Borrowed(r.take(n)?))
    }
}

impl<'a> Wire<'a> for Cow<'a, str> {
    #[inline]
    fn put(&self, out: &mut Vec<u8>) {
        put_varint(out, self.len() as u64);
        out.extend_from_slice(self.as_bytes());
    }
    #[inline]
    fn get(r: &mut Reader<'a>) -> Result<Self, BodyError> {
        let n = r.length()?;
        let at = r.position();
        let bytes = r.take(n)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(Cow::Borrowed(s)),
            Err(_) => Err(BodyError {
                reason: "string is not valid UTF-8",
                offset: at,
            }),
        }
    }
}

impl<'a, T: Wire<'a>> Wire<'a> for Vec<T> {
    fn put(&self, out: &mut Vec<u8>) {
        put_varint(out, self.len() as u64);
        for item in self {
            item.put(out);
        }
    }
    fn get(r: &mut Reader<'a>) -> Result<Self, BodyError> {
        // Every item is at least one byte, so the count is bounded by the body and a hostile
        // count cannot make us reserve more than the frame size.
        let n = r.length()?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(T::get(r)?);
        }
        Ok(v)
    }
}

impl<'a, T: Wire<'a>> Wire<'a> for Option<T> {
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                v.put(out);
            }
        }
    }
    fn get(r: &mut Reader<'a>) -> Result<Self, BodyError> {
        match r.array::<1>()?[0] {
            0 => Ok(None),
            1 => Ok(Some(T::get(r)?)),
            _ => r.fail("option tag is neither 0 nor 1"),
        }
    }
}

/// Declares a newtype over a wire integer with named constants. Unknown values are kept, so
/// they decode and print (`Name(0x7f)`) instead of failing.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub struct $name:ident($repr:ty) {
            $( $(#[$cmeta:meta])* $konst:ident = $val:expr ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub $repr);

        #[allow(missing_docs)]
        impl $name {
            $( $(#[$cmeta])* pub const $konst: $name = $name($val); )*

            /// Every value this protocol revision names.
            pub const KNOWN: &'static [$name] = &[$($name::$konst),*];

            /// The name of a known value, `None` for a value this revision does not name.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $( $val => Some(stringify!($konst)), )*
                    _ => None,
                }
            }

            pub fn is_known(self) -> bool {
                self.name().is_some()
            }

            /// Looks a value up by its name (case-insensitive), for command-line filters.
            pub fn from_name(s: &str) -> Option<$name> {
                $( if s.eq_ignore_ascii_case(stringify!($konst)) { return Some($name::$konst); } )*
                None
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match self.name() {
                    Some(n) => f.write_str(n),
                    None => write!(f, "{}({:#x})", stringify!($name), self.0),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Debug::fmt(self, f)
            }
        }

        impl $crate::wire::IntoOwned for $name {
            type Owned = $name;
            #[inline]
            fn into_owned(self) -> $name {
                self
            }
        }

        #[cfg(feature = "serde")]
        impl $crate::ser::SerField for $name {
            fn ser<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                serde::Serialize::serialize(self, s)
            }
        }

        #[cfg(feature = "serde")]
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                match self.name() {
                    Some(n) => s.serialize_str(n),
                    None => s.serialize_u64(u64::from(self.0)),
                }
            }
        }

        #[cfg(test)]
        impl $crate::wire::arb::Arb for $name {
            fn arb(g: &mut $crate::wire::arb::Gen) -> Self {
                // Mostly named values, sometimes any value, which must round-trip too.
                if g.below(4) == 0 {
                    $name(<$repr as $crate::wire::arb::Arb>::arb(g))
                } else {
                    $name::KNOWN[g.below($name::KNOWN.len() as u64) as usize]
                }
            }
        }

        impl<'a> $crate::wire::Wire<'a> for $name {
            #[inline]
            fn put(&self, out: &mut Vec<u8>) {
                self.0.put(out)
            }
            #[inline]
            fn get(r: &mut $crate::wire::Reader<'a>) -> Result<Self, $crate::wire::BodyError> {
                Ok($name(<$repr as $crate::wire::Wire<'a>>::get(r)?))
            }
        }
    };
}

/// Declares a body struct whose fields are encoded in declaration order (SPEC.md §3: fixed
/// order, later revisions only append). Also derives `into_owned` for frames that must outlive
/// the receive buffer. Structs with a lifetime borrow strings/bytes from the frame.
macro_rules! wire_struct {
    (
        $(#[$meta:meta])*
        pub struct $name:ident<'a> {
            $( $(#[$fmeta:meta])* pub $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Default)]
        #[cfg_attr(feature = "serde", derive(serde::Serialize))]
        pub struct $name<'a> {
            $( $(#[$fmeta])*
            #[cfg_attr(feature = "serde", serde(serialize_with = "crate::ser::field"))]
            pub $field: $ty, )*
        }

        impl<'a> $crate::wire::Wire<'a> for $name<'a> {
            #[inline]
            fn put(&self, out: &mut Vec<u8>) {
                $( self.$field.put(out); )*
            }
            #[inline]
            fn get(r: &mut $crate::wire::Reader<'a>) -> Result<Self, $crate::wire::BodyError> {
                Ok($name { $( $field: <$ty as $crate::wire::Wire<'a>>::get(r)?, )* })
            }
        }

        impl<'a> $crate::wire::IntoOwned for $name<'a> {
            type Owned = $name<'static>;
            fn into_owned(self) -> $name<'static> {
                $name { $( $field: $crate::wire::IntoOwned::into_owned(self.$field), )* }
            }
        }

        #[cfg(feature = "serde")]
        impl<'a> $crate::ser::SerField for $name<'a> {
            fn ser<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                serde::Serialize::serialize(self, s)
            }
        }

        #[cfg(test)]
        impl<'a> $crate::wire::arb::Arb for $name<'a> {
            fn arb(g: &mut $crate::wire::arb::Gen) -> Self {
                $name { $( $field: <$ty as $crate::wire::arb::Arb>::arb(g), )* }
            }
        }
    };
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* pub $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        #[cfg_attr(feature = "serde", derive(serde::Serialize))]
        pub struct $name {
            $( $(#[$fmeta])*
            #[cfg_attr(feature = "serde", serde(serialize_with = "crate::ser::field"))]
            pub $field: $ty, )*
        }

        impl<'a> $crate::wire::Wire<'a> for $name {
            #[inline]
            fn put(&self, out: &mut Vec<u8>) {
                $( self.$field.put(out); )*
            }
            #[inline]
            fn get(r: &mut $crate::wire::Reader<'a>) -> Result<Self, $crate::wire::BodyError> {
                Ok($name { $( $field: <$ty as $crate::wire::Wire<'a>>::get(r)?, )* })
            }
        }

        impl $crate::wire::IntoOwned for $name {
            type Owned = $name;
            fn into_owned(self) -> $name {
                self
            }
        }

        #[cfg(feature = "serde")]
        impl $crate::ser::SerField for $name {
            fn ser<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                serde::Serialize::serialize(self, s)
            }
        }

        #[cfg(test)]
        impl $crate::wire::arb::Arb for $name {
            fn arb(g: &mut $crate::wire::arb::Gen) -> Self {
                $name { $( $field: <$ty as $crate::wire::arb::Arb>::arb(g), )* }
            }
        }
    };
}

pub(crate) use {wire_enum, wire_struct};

/// Detaches a decoded value from the buffer it borrows from.
pub trait IntoOwned {
    type Owned: 'static;
    fn into_owned(self) -> Self::Owned;
}

macro_rules! owned_is_self {
    ($($t:ty),*) => { $( impl IntoOwned for $t { type Owned = $t; #[inline] fn into_owned(self) -> $t { self } } )* };
}
owned_is_self!(u8, u16, u32, u64, bool, [u8; 16]);

impl IntoOwned for Cow<'_, str> {
    type Owned = Cow<'static, str>;
    fn into_owned(self) -> Cow<'static, str> {
        Cow::Owned(Cow::into_owned(self))
    }
}

impl IntoOwned for Cow<'_, [u8]> {
    type Owned = Cow<'static, [u8]>;
    fn into_owned(self) -> Cow<'static, [u8]> {
        Cow::Owned(Cow::into_owned(self))
    }
}

impl<T: IntoOwned> IntoOwned for Vec<T> {
    type Owned = Vec<T::Owned>;
    fn into_owned(self) -> Self::Owned {
        self.into_iter().map(IntoOwned::into_owned).collect()
    }
}

impl<T: IntoOwned> IntoOwned for Option<T> {
    type Owned = Option<T::Owned>;
    fn into_owned(self) -> Self::Owned {
        self.map(IntoOwned::into_owned)
    }
}

/// Random values of every wire type, for the property tests. A seeded generator rather than
/// proptest strategies per type: the macros above can then derive it for every body.
#[cfg(test)]
pub(crate) mod arb {
    use std::borrow::Cow;

    #[derive(Debug)]
    pub struct Gen(u64);

    impl Gen {
        pub fn new(seed: u64) -> Self {
            Gen(seed ^ 0x9E37_79B9_7F4A_7C15)
        }

        pub fn next(&mut self) -> u64 {
            // splitmix64
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        pub fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    pub trait Arb: Sized {
        fn arb(g: &mut Gen) -> Self;
    }

    impl Arb for u8 {
        fn arb(g: &mut Gen) -> Self {
            g.next() as u8
        }
    }
    impl Arb for u16 {
        fn arb(g: &mut Gen) -> Self {
            g.next() as u16
        }
    }
    impl Arb for u32 {
        fn arb(g: &mut Gen) -> Self {
            g.next() as u32
        }
    }
    impl Arb for u64 {
        fn arb(g: &mut Gen) -> Self {
            // Every varint length is exercised: shift a random value right by 0..64 bits.
            let shift = g.below(64);
            g.next() >> shift
        }
    }
    impl Arb for bool {
        fn arb(g: &mut Gen) -> Self {
            g.next() & 1 == 1
        }
    }
    impl Arb for crate::types::MsgId {
        fn arb(g: &mut Gen) -> Self {
            let mut a = [0u8; 16];
            a[..8].copy_from_slice(&g.next().to_le_bytes());
            a[8..].copy_from_slice(&g.next().to_le_bytes());
            crate::types::MsgId(a)
        }
    }
    impl<'a> Arb for Cow<'a, str> {
        fn arb(g: &mut Gen) -> Self {
            const CHARS: &[char] = &['a', 'z', '0', '-', ' ', 'é', '☃', '𝄞', '\u{0}', '中'];
            let n = g.below(24);
            Cow::Owned(
                (0..n)
                    .map(|_| CHARS[g.below(CHARS.len() as u64) as usize])
                    .collect(),
            )
        }
    }
    impl<'a> Arb for Cow<'a, [u8]> {
        fn arb(g: &mut Gen) -> Self {
            let n = if g.below(8) == 0 {
                g.below(3000)
            } else {
                g.below(40)
            };
            Cow::Owned((0..n).map(|_| g.next() as u8).collect())
        }
    }
    impl<T: Arb> Arb for Vec<T> {
        fn arb(g: &mut Gen) -> Self {
            let n = g.below(4);
            (0..n).map(|_| T::arb(g)).collect()
        }
    }
    impl<T: Arb> Arb for Option<T> {
        fn arb(g: &mut Gen) -> Self {
            if g.next() & 1 == 0 {
                None
            } else {
                Some(T::arb(g))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn varint_round_trips_at_every_length() {
        for shift in 0..64 {
            for v in [1u64 << shift, (1u64 << shift) - 1, (1u64 << shift) + 1] {
                let mut out = Vec::new();
                put_varint(&mut out, v);
                assert_eq!(out.len(), varint_len(v), "len of {v}");
                let mut r = Reader::new(&out);
                assert_eq!(r.varint().unwrap(), v);
                assert_eq!(r.remaining(), 0);
            }
        }
        let mut out = Vec::new();
        put_varint(&mut out, u64::MAX);
        assert_eq!(out.len(), 10);
        assert_eq!(Reader::new(&out).varint().unwrap(), u64::MAX);
    }

    #[test]
    fn varint_rejects_non_minimal_and_overflow() {
        assert!(Reader::new(&[0x80, 0x00]).varint().is_err());
        assert!(Reader::new(&[0x81, 0x80, 0x00]).varint().is_err());
        let overflow = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(Reader::new(&overflow).varint().is_err());
        assert!(Reader::new(&[0xff; 11]).varint().is_err());
        assert!(Reader::new(&[0x80]).varint().is_err());
        assert_eq!(Reader::new(&[0x00]).varint().unwrap(), 0);
    }

    #[test]
    fn strings_must_be_utf8_and_fit() {
        let mut r = Reader::new(&[2, 0xff, 0xfe]);
        assert_eq!(
            <Cow<'_, str>>::get(&mut r).unwrap_err().reason,
            "string is not valid UTF-8"
        );
        let mut r = Reader::new(&[5, b'a']);
        assert!(<Cow<'_, str>>::get(&mut r).is_err());
    }
}
