//! JSON-friendly serialization of frames (feature `serde`), for the dump tool and scripts:
//! named enum values print as names, byte strings as text when they are UTF-8 and as
//! `{"hex": "..."}` otherwise, message ids as hex.

use std::borrow::Cow;

use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::types::MsgId;

/// A field's JSON form. Plain `Serialize` would print byte strings as arrays of numbers.
pub trait SerField {
    fn ser<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error>;
}

/// `serialize_with` target used by every body struct field.
pub fn field<T: SerField, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    v.ser(s)
}

macro_rules! via_serialize {
    ($($t:ty),*) => { $( impl SerField for $t { fn ser<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> { self.serialize(s) } } )* };
}
via_serialize!(u8, u16, u32, u64, bool);

impl SerField for Cow<'_, str> {
    fn ser<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self)
    }
}

impl SerField for Cow<'_, [u8]> {
    fn ser<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(self) {
            Ok(text) => s.serialize_str(text),
            Err(_) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("hex", &hex::encode(self.as_ref()))?;
                m.end()
            }
        }
    }
}

impl SerField for MsgId {
    fn ser<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl Serialize for MsgId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.ser(s)
    }
}

/// Lets a `SerField` value stand where `Serialize` is expected (list items, option contents).
struct AsSer<'a, T>(&'a T);

impl<T: SerField> Serialize for AsSer<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.ser(s)
    }
}

impl<T: SerField> SerField for Vec<T> {
    fn ser<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter().map(AsSer))
    }
}

impl<T: SerField> SerField for Option<T> {
    fn ser<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            None => s.serialize_none(),
            Some(v) => s.serialize_some(&AsSer(v)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::borrow::Cow;

    use crate::*;

    #[test]
    fn frames_serialize_with_names_and_text() {
        let body = Body::Send(Send {
            to: Conv::direct("bob"),
            msg_id: MsgId([0xab; 16]),
            kind: MessageKind::TEXT,
            body: Cow::Borrowed(b"hi"),
        });
        let v = serde_json::to_value(&body).unwrap();
        assert_eq!(v["to"]["kind"], "DIRECT");
        assert_eq!(v["to"]["id"], "bob");
        assert_eq!(v["kind"], "TEXT");
        assert_eq!(v["body"], "hi");
        assert_eq!(v["msg_id"], "ab".repeat(16));
        let bin = Body::Send(Send {
            body: Cow::Borrowed(&[0xff, 0x00]),
            kind: MessageKind(0x99),
            ..Default::default()
        });
        let v = serde_json::to_value(&bin).unwrap();
        assert_eq!(v["body"]["hex"], "ff00");
        assert_eq!(v["kind"], 0x99);
    }
}
