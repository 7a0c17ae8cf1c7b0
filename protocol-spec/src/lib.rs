//! The tern wire protocol, version 1: the sans-io codec for the frames specified byte by byte in
//! `protocol-spec/SPEC.md`, and the catalogue behind the test vectors in `protocol-spec/vectors/`.
//!
//! No sockets, no clock: [`decode`] takes bytes and returns frames that borrow from them,
//! [`Frame::encode`] appends to a buffer the caller reuses. Code that implements a requirement of
//! the spec cites it with `//= SPEC.md#section` and quotes it with `//#`.

pub mod codec;
pub mod frames;
#[cfg(feature = "serde")]
pub mod ser;
pub mod types;
pub mod vectors;
pub mod wire;

pub use codec::{
    decode, decode_raw, frame_crc, DecodeError, EncodeError, Frame, FrameIter, Header, RawFrame,
    ABS_MAX_BODY, DEFAULT_MAX_BODY, HEADER_LEN, MAGIC, MIN_MAX_BODY, VERSION,
};
pub use frames::*;
pub use types::*;
pub use wire::IntoOwned;

/// Protocol revision carried in HELLO/WELCOME `protocol`.
pub const PROTOCOL: u16 = 1;

#[cfg(test)]
mod proptests;
