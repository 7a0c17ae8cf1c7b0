//! Decodes one direction of one connection as its bytes arrive: frames out, errors with their
//! byte offsets and spec codes, and resynchronisation on the frame magic after garbage or when a
//! capture starts in the middle of a connection.

use tern_protocol::{
    decode_raw, Body, DecodeError, ErrorCode, RawFrame, ABS_MAX_BODY, MAGIC, VERSION,
};

/// One thing found in a stream.
#[derive(Debug)]
pub enum Item<'a> {
    /// A frame with a valid header and CRC; `parsed` holds the body or why it failed.
    Frame {
        offset: u64,
        raw: RawFrame<'a>,
        parsed: Result<tern_protocol::Frame<'a>, DecodeError>,
    },
    /// Bytes that are not a frame.
    Error {
        offset: u64,
        code: ErrorCode,
        message: String,
    },
    /// Decoding skipped `skipped` bytes to the next plausible frame start.
    Resync { offset: u64, skipped: u64 },
}

/// Incremental decoder state for one direction.
#[derive(Debug)]
pub struct StreamDecoder {
    buf: Vec<u8>,
    /// Stream offset of `buf[0]`.
    base: u64,
    /// Looking for a frame start (after an error, or a capture joined mid-stream).
    hunting: bool,
    /// Body limit in force: the spec's 65,536 until a HELLO or WELCOME announces another.
    pub max_body: u32,
    /// The bytes are not a clean frame stream (transport framing was lost): look for the magic
    /// after every frame, and do not report the skipped bytes.
    pub salvage: bool,
}

impl StreamDecoder {
    pub fn new(midstream: bool, max_body: u32) -> Self {
        StreamDecoder {
            buf: Vec::new(),
            base: 0,
            hunting: midstream,
            max_body,
            salvage: false,
        }
    }

    /// Marks a gap in the stream (lost segments): what follows is decoded after a resync.
    pub fn gap(&mut self, lost: u64) {
        self.base += self.buf.len() as u64 + lost;
        self.buf.clear();
        self.hunting = true;
    }

    /// Adds bytes and calls `out` for every item they complete.
    pub fn feed(&mut self, data: &[u8], out: &mut dyn FnMut(Item<'_>)) {
        self.buf.extend_from_slice(data);
        let mut pos = 0usize;
        loop {
            if self.hunting {
                match find_start(&self.buf[pos..]) {
                    Some(i) => {
                        if !self.salvage && (i > 0 || pos > 0 || self.base > 0) {
                            out(Item::Resync {
                                offset: self.base + (pos + i) as u64,
                                skipped: i as u64,
                            });
                        }
                        pos += i;
                        self.hunting = false;
                    }
                    None => {
                        // Keep the last two bytes: they may be the start of a magic.
                        let keep = (self.buf.len() - pos).min(2);
                        pos = self.buf.len() - keep;
                        break;
                    }
                }
            }
            let offset = self.base + pos as u64;
            match decode_raw(&self.buf[pos..], self.max_body) {
                Ok(None) => break,
                Ok(Some(raw)) => {
                    let len = raw.header.frame_len();
                    let parsed = raw.parse();
                    // Follow the negotiation (SPEC.md "Frame size"): the limits announced in
                    // HELLO and WELCOME apply to the rest of the connection. The dump tool
                    // takes the larger, as it cannot know which side enforces which.
                    if let Ok(f) = &parsed {
                        match &f.body {
                            Body::Hello(h) => {
                                self.max_body = self.max_body.max(h.max_frame.min(ABS_MAX_BODY))
                            }
                            Body::Welcome(w) => {
                                self.max_body = self.max_body.max(w.max_frame.min(ABS_MAX_BODY))
                            }
                            _ => {}
                        }
                    }
                    out(Item::Frame {
                        offset,
                        raw,
                        parsed,
                    });
                    pos += len;
                    self.hunting = self.salvage;
                }
                Err(e) => {
                    // After a CRC failure the length field itself is suspect: search again
                    // from the next byte rather than trusting it. Body errors have a good CRC,
                    // so their length can be skipped.
                    let skip = match e {
                        DecodeError::BadCrc { .. } => None,
                        _ => e.frame_len(),
                    };
                    out(Item::Error {
                        offset,
                        code: e.code(),
                        message: e.to_string(),
                    });
                    match skip {
                        Some(n) => pos += n,
                        None => {
                            pos += 1;
                            self.hunting = true;
                        }
                    }
                }
            }
        }
        self.buf.drain(..pos);
        self.base += pos as u64;
    }

    /// The end of a message that holds whole frames (a tunnel body): reports a frame cut short,
    /// and expects the next bytes to start a frame.
    pub fn boundary(&mut self, out: &mut dyn FnMut(Item<'_>)) {
        self.finish(out);
        self.hunting = self.salvage;
    }

    /// Reports bytes left when the stream ends: a frame cut short. Its length may have been
    /// garbage, so the bytes after its start are searched for frames too.
    pub fn finish(&mut self, out: &mut dyn FnMut(Item<'_>)) {
        while !self.buf.is_empty() {
            if !self.hunting {
                out(Item::Error {
                    offset: self.base,
                    code: ErrorCode::TRUNCATED,
                    message: format!("stream ends {} bytes into a frame", self.buf.len()),
                });
            }
            let rest = self.buf.split_off(1);
            self.buf.clear();
            self.base += 1;
            self.hunting = true;
            self.feed(&rest, out);
            if self.hunting {
                break;
            }
        }
        self.base += self.buf.len() as u64;
        self.buf.clear();
    }
}

/// Position of the first `E7 4E 01` in `b`, or a tail that could begin one.
fn find_start(b: &[u8]) -> Option<usize> {
    b.windows(3)
        .position(|w| w[0] == MAGIC[0] && w[1] == MAGIC[1] && w[2] == VERSION)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;
    use tern_protocol::{Body, Conv, Frame, MessageKind, MsgId, Ping, Send};

    fn frames() -> Vec<u8> {
        let mut b = Vec::new();
        for i in 0..5u32 {
            let f = Frame::new(
                i,
                Body::Send(Send {
                    to: Conv::direct("bob"),
                    msg_id: MsgId([i as u8; 16]),
                    kind: MessageKind::TEXT,
                    body: Cow::Borrowed(b"hello"),
                }),
            );
            f.encode(&mut b).ok();
            Frame::new(i, Body::Ping(Ping { time: u64::from(i) }))
                .encode(&mut b)
                .ok();
        }
        b
    }

    fn run(d: &mut StreamDecoder, chunks: &[&[u8]]) -> (Vec<(u64, u32)>, Vec<ErrorCode>, u64) {
        let (mut ok, mut errs, mut resyncs) = (Vec::new(), Vec::new(), 0);
        let mut sink = |item: Item<'_>| match item {
            Item::Frame {
                offset,
                parsed: Ok(f),
                ..
            } => ok.push((offset, f.request_id)),
            Item::Frame { parsed: Err(e), .. } => errs.push(e.code()),
            Item::Error { code, .. } => errs.push(code),
            Item::Resync { .. } => resyncs += 1,
        };
        for c in chunks {
            d.feed(c, &mut sink);
        }
        d.finish(&mut sink);
        (ok, errs, resyncs)
    }

    #[test]
    fn byte_by_byte_equals_all_at_once() {
        let b = frames();
        let whole = run(&mut StreamDecoder::new(false, ABS_MAX_BODY), &[&b]);
        let singles: Vec<&[u8]> = b.chunks(1).collect();
        let split = run(&mut StreamDecoder::new(false, ABS_MAX_BODY), &singles);
        assert_eq!(whole, split);
        assert_eq!(whole.0.len(), 10);
        assert!(whole.1.is_empty());
    }

    #[test]
    fn midstream_start_resynchronises_on_magic() {
        let b = frames();
        // Join 7 bytes into the first frame, as a capture that missed the start would.
        let (ok, errs, resyncs) = run(&mut StreamDecoder::new(true, ABS_MAX_BODY), &[&b[7..]]);
        assert_eq!(resyncs, 1);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(ok.len(), 9);
    }

    #[test]
    fn corrupt_frame_is_reported_and_decoding_continues() {
        let mut b = frames();
        b[20] ^= 0xff; // inside the first SEND's body
        let (ok, errs, _) = run(&mut StreamDecoder::new(false, ABS_MAX_BODY), &[&b]);
        assert_eq!(errs, vec![ErrorCode::BAD_CRC]);
        assert_eq!(ok.len(), 9);
    }
}
