//! Framing (SPEC.md §2): the 16-byte header, the CRC, limits, and decoding from a buffer that may
//! hold part of a frame or many frames. Sans-io: callers own the bytes and the buffers.

use crate::frames::Body;
use crate::types::{ErrorCode, Flags, FrameType};
use crate::wire::{BodyError, Reader};

//= SPEC.md#header
//# The header is 16 bytes: magic E7 4E, version, type, flags, 24-bit body length, 32-bit
//# request id, and the CRC-32 of header bytes 0..12 followed by the body.
pub const MAGIC: [u8; 2] = [0xE7, 0x4E];
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 16;
/// Body limit in force before WELCOME, and the default of both sides.
pub const DEFAULT_MAX_BODY: u32 = 65_536;
/// Smallest limit a peer may announce.
pub const MIN_MAX_BODY: u32 = 4_096;
/// Largest body the 24-bit length can express.
pub const ABS_MAX_BODY: u32 = 0x00FF_FFFF;

/// The fixed header of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u8,
    pub frame_type: FrameType,
    pub flags: Flags,
    pub body_len: u32,
    pub request_id: u32,
    pub crc: u32,
}

impl Header {
    /// Parses the 16 header bytes without judging them.
    pub fn parse(b: &[u8; HEADER_LEN]) -> Header {
        Header {
            version: b[2],
            frame_type: FrameType(b[3]),
            flags: Flags(b[4]),
            body_len: u32::from_le_bytes([b[5], b[6], b[7], 0]),
            request_id: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            crc: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
        }
    }

    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.body_len as usize
    }
}

/// Why bytes could not be decoded as a frame. Each maps to the ERROR code of SPEC.md §8.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("bad magic {found:02x?} (expected e7 4e)")]
    BadMagic { found: [u8; 2] },
    #[error("unsupported header version {0}")]
    UnsupportedVersion(u8),
    #[error("body of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: u32, max: u32 },
    #[error("CRC mismatch: header says {expected:#010x}, bytes give {actual:#010x}")]
    BadCrc {
        expected: u32,
        actual: u32,
        frame_len: usize,
    },
    #[error("unknown frame type {frame_type}")]
    UnknownType {
        frame_type: FrameType,
        frame_len: usize,
    },
    #[error("unsupported critical flags {flags:#04x} on {frame_type}")]
    UnsupportedFlags {
        frame_type: FrameType,
        flags: u8,
        frame_len: usize,
    },
    #[error("malformed {frame_type} body at body offset {offset}: {reason}")]
    BadBody {
        frame_type: FrameType,
        reason: &'static str,
        offset: usize,
        frame_len: usize,
    },
}

impl DecodeError {
    /// The ERROR code a receiver sends for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::BadMagic { .. } => ErrorCode::BAD_MAGIC,
            DecodeError::UnsupportedVersion(_) => ErrorCode::UNSUPPORTED_VERSION,
            DecodeError::TooLarge { .. } => ErrorCode::FRAME_TOO_LARGE,
            DecodeError::BadCrc { .. } => ErrorCode::BAD_CRC,
            DecodeError::UnknownType { .. } => ErrorCode::UNKNOWN_FRAME_TYPE,
            DecodeError::UnsupportedFlags { .. } => ErrorCode::UNSUPPORTED_FLAGS,
            DecodeError::BadBody { .. } => ErrorCode::BAD_FRAME,
        }
    }

    /// Length of the offending frame when its header was sound enough to know it, so that a
    /// tool can skip it and carry on. A node closes the connection instead.
    pub fn frame_len(&self) -> Option<usize> {
        match self {
            DecodeError::BadCrc { frame_len, .. }
            | DecodeError::UnknownType { frame_len, .. }
            | DecodeError::UnsupportedFlags { frame_len, .. }
            | DecodeError::BadBody { frame_len, .. } => Some(*frame_len),
            _ => None,
        }
    }
}

/// A frame whose header, length and CRC are valid, body not yet parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawFrame<'a> {
    pub header: Header,
    pub body: &'a [u8],
}

/// A decoded frame: header fields that matter to the application, and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<'a> {
    pub request_id: u32,
    pub flags: Flags,
    pub body: Body<'a>,
}

impl<'a> Frame<'a> {
    pub fn new(request_id: u32, body: Body<'a>) -> Self {
        Frame {
            request_id,
            flags: Flags::NONE,
            body,
        }
    }

    pub fn frame_type(&self) -> FrameType {
        self.body.frame_type()
    }

    pub fn into_owned(self) -> Frame<'static> {
        Frame {
            request_id: self.request_id,
            flags: self.flags,
            body: self.body.into_owned(),
        }
    }

    /// Appends the encoded frame to `out` and returns its length. `out` is reused across
    /// frames, so encoding allocates only when it has to grow.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<usize, EncodeError> {
        let start = out.len();
        out.extend_from_slice(&[0u8; HEADER_LEN]);
        self.body.put(out);
        let body_len = out.len() - start - HEADER_LEN;
        if body_len > ABS_MAX_BODY as usize {
            out.truncate(start);
            return Err(EncodeError::TooLarge { len: body_len });
        }
        let h = &mut out[start..start + HEADER_LEN];
        h[0..2].copy_from_slice(&MAGIC);
        h[2] = VERSION;
        h[3] = self.body.frame_type().0;
        h[4] = self.flags.0;
        h[5..8].copy_from_slice(&(body_len as u32).to_le_bytes()[..3]);
        h[8..12].copy_from_slice(&self.request_id.to_le_bytes());
        let crc = frame_crc(&out[start..start + 12], &out[start + HEADER_LEN..]);
        out[start + 12..start + HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
        Ok(HEADER_LEN + body_len)
    }

    /// Encodes into a fresh vector.
    pub fn to_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        let mut v = Vec::new();
        self.encode(&mut v)?;
        Ok(v)
    }
}

/// Encoding fails only for bodies larger than the 24-bit length can carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("body of {len} bytes exceeds the wire maximum of 16777215")]
    TooLarge { len: usize },
}

//= SPEC.md#crc
//# The CRC-32 (IEEE 802.3, reflected, as in zlib) covers header bytes 0..12 and then the body.
#[inline]
pub fn frame_crc(header12: &[u8], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(header12);
    h.update(body);
    h.finalize()
}

/// Checks the header, length and CRC of the frame at the start of `buf`.
///
/// `Ok(None)` means `buf` holds only part of a frame: read more and call again. On success the
/// frame occupies `header.frame_len()` bytes of `buf`.
pub fn decode_raw(buf: &[u8], max_body: u32) -> Result<Option<RawFrame<'_>>, DecodeError> {
    //= SPEC.md#decoding-order
    //# A receiver checks magic, version and length as soon as it has their bytes, so garbage and
    //# oversize frames are refused without waiting for more input.
    if buf.len() >= 2 && buf[0..2] != MAGIC {
        return Err(DecodeError::BadMagic {
            found: [buf[0], buf[1]],
        });
    }
    if buf.len() == 1 && buf[0] != MAGIC[0] {
        return Err(DecodeError::BadMagic { found: [buf[0], 0] });
    }
    if buf.len() >= 3 && buf[2] != VERSION {
        return Err(DecodeError::UnsupportedVersion(buf[2]));
    }
    if buf.len() >= 8 {
        let len = u32::from_le_bytes([buf[5], buf[6], buf[7], 0]);
        if len > max_body {
            return Err(DecodeError::TooLarge { len, max: max_body });
        }
    }
    let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let header = Header::parse(head);
    let frame_len = header.frame_len();
    if buf.len() < frame_len {
        return Ok(None);
    }
    let body = &buf[HEADER_LEN..frame_len];
    let actual = frame_crc(&buf[..12], body);
    if actual != header.crc {
        return Err(DecodeError::BadCrc {
            expected: header.crc,
            actual,
            frame_len,
        });
    }
    Ok(Some(RawFrame { header, body }))
}

impl<'a> RawFrame<'a> {
    /// Parses the body. Trailing bytes after the known fields are ignored (SPEC.md §3.8).
    #[inline]
    pub fn parse(&self) -> Result<Frame<'a>, DecodeError> {
        let h = self.header;
        let frame_len = h.frame_len();
        if !h.frame_type.is_known() {
            return Err(DecodeError::UnknownType {
                frame_type: h.frame_type,
                frame_len,
            });
        }
        let unknown = h.flags.unknown_critical();
        if unknown != 0 {
            return Err(DecodeError::UnsupportedFlags {
                frame_type: h.frame_type,
                flags: unknown,
                frame_len,
            });
        }
        let mut r = Reader::new(self.body);
        let body = match Body::get(h.frame_type, &mut r) {
            None => {
                return Err(DecodeError::UnknownType {
                    frame_type: h.frame_type,
                    frame_len,
                })
            }
            Some(Err(BodyError { reason, offset })) => {
                return Err(DecodeError::BadBody {
                    frame_type: h.frame_type,
                    reason,
                    offset,
                    frame_len,
                })
            }
            Some(Ok(b)) => b,
        };
        Ok(Frame {
            request_id: h.request_id,
            flags: h.flags,
            body,
        })
    }
}

/// Decodes the frame at the start of `buf`: `Ok(Some((frame, used)))`, or `Ok(None)` when more
/// bytes are needed. Decoding borrows strings and bodies from `buf` and allocates only for
/// list-bearing bodies.
#[inline]
pub fn decode(buf: &[u8], max_body: u32) -> Result<Option<(Frame<'_>, usize)>, DecodeError> {
    match decode_raw(buf, max_body)? {
        None => Ok(None),
        Some(raw) => Ok(Some((raw.parse()?, raw.header.frame_len()))),
    }
}

/// Iterates over every complete frame in a buffer, for callers that drain a read buffer in one
/// go. Stops at the first incomplete frame (see [`FrameIter::consumed`]) or error.
#[derive(Debug)]
pub struct FrameIter<'a> {
    buf: &'a [u8],
    pos: usize,
    max_body: u32,
    failed: bool,
}

impl<'a> FrameIter<'a> {
    pub fn new(buf: &'a [u8], max_body: u32) -> Self {
        FrameIter {
            buf,
            pos: 0,
            max_body,
            failed: false,
        }
    }

    /// Bytes of complete frames consumed so far; the rest must be kept for the next read.
    pub fn consumed(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for FrameIter<'a> {
    type Item = Result<Frame<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match decode(&self.buf[self.pos..], self.max_body) {
            Ok(None) => None,
            Ok(Some((f, used))) => {
                self.pos += used;
                Some(Ok(f))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}
