//! RFC 6455 frames read from captured bytes, in either direction.
//!
//! Hand-written rather than tungstenite's: tungstenite drives a socket as one endpoint (it expects
//! masked frames only where a server would receive them, answers pings and enforces its own
//! state), while a dump reads both directions of someone else's conversation passively, from bytes
//! that are already captured, and must keep going after a frame it dislikes.

/// The opcodes of RFC 6455 §5.2.
pub const CONTINUATION: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// Largest payload accepted from one frame: far above any tern frame (16 MiB) plus headroom, so a
/// corrupt length is reported instead of buffering the rest of the capture.
const MAX_PAYLOAD: u64 = 64 << 20;

/// One WebSocket frame, payload unmasked.
#[derive(Debug)]
pub struct WsFrame {
    pub fin: bool,
    /// RSV1..3 as the top three bits; non-zero only with an extension (none is used by tern).
    pub rsv: u8,
    pub opcode: u8,
    pub masked: bool,
    pub payload: Vec<u8>,
}

/// What the start of a buffer holds.
#[derive(Debug)]
pub enum Parsed {
    /// Not a whole frame yet.
    Need,
    /// A frame and the number of bytes it took.
    Frame(WsFrame, usize),
    /// A length no frame can have: framing is lost from here.
    Bad(String),
}

/// Parses the frame at the start of `buf`.
pub fn parse(buf: &[u8]) -> Parsed {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
        return Parsed::Need;
    };
    let masked = b1 & 0x80 != 0;
    let (len, mut pos) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Parsed::Need,
        },
        127 => match buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(b) => (u64::from_be_bytes(b), 10),
            None => return Parsed::Need,
        },
        n => (u64::from(n), 2),
    };
    if len > MAX_PAYLOAD {
        return Parsed::Bad(format!("WebSocket frame length {len} is not plausible"));
    }
    let mut key = [0u8; 4];
    if masked {
        match buf.get(pos..pos + 4) {
            Some(k) => key.copy_from_slice(k),
            None => return Parsed::Need,
        }
        pos += 4;
    }
    // `len` is at most MAX_PAYLOAD, so it fits usize.
    let end = pos + len as usize;
    let Some(data) = buf.get(pos..end) else {
        return Parsed::Need;
    };
    let mut payload = data.to_vec();
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    Parsed::Frame(
        WsFrame {
            fin: b0 & 0x80 != 0,
            rsv: b0 & 0x70,
            opcode: b0 & 0x0f,
            masked,
            payload,
        },
        end,
    )
}

/// The opcode's name for notes.
pub fn opcode_name(op: u8) -> &'static str {
    match op {
        CONTINUATION => "continuation",
        TEXT => "text",
        BINARY => "binary",
        CLOSE => "close",
        PING => "ping",
        PONG => "pong",
        _ => "reserved",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_extended_length_frame() {
        let payload: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let key = [1u8, 2, 3, 4];
        let mut b = vec![0x82, 0x80 | 126, 0x01, 0x2c];
        b.extend_from_slice(&key);
        b.extend(payload.iter().enumerate().map(|(i, x)| x ^ key[i % 4]));
        for cut in 0..b.len() {
            assert!(matches!(parse(&b[..cut]), Parsed::Need), "cut {cut}");
        }
        let Parsed::Frame(f, n) = parse(&b) else {
            panic!("not a frame")
        };
        assert_eq!(n, b.len());
        assert!(f.fin && f.masked);
        assert_eq!(f.opcode, BINARY);
        assert_eq!(f.payload, payload);
    }

    #[test]
    fn absurd_length_is_reported() {
        let b = [0x82, 127, 0xff, 0, 0, 0, 0, 0, 0, 0];
        assert!(matches!(parse(&b), Parsed::Bad(_)));
    }
}
