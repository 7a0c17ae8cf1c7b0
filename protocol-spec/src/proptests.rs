//! Property tests of the codec: encode-then-decode is the identity for arbitrary frames, any
//! split of a byte stream decodes to the same frames, and no input makes the decoder panic.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use crate::codec::*;
use crate::frames::Body;
use crate::types::Flags;
use crate::wire::arb::{Arb, Gen};

fn arb_frame(g: &mut Gen) -> Frame<'static> {
    Frame {
        request_id: u32::arb(g),
        // Only ignorable bits: critical ones are rejected by design.
        flags: Flags(u8::arb(g) & 0x0F),
        body: Body::arb(g),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn encode_then_decode_is_identity(seed in any::<u64>()) {
        let frame = arb_frame(&mut Gen::new(seed));
        let mut buf = vec![0xAA; 3]; // encoding appends after what is there
        let n = frame.encode(&mut buf).unwrap();
        prop_assert_eq!(n, buf.len() - 3);
        let (back, used) = decode(&buf[3..], ABS_MAX_BODY).unwrap().unwrap();
        prop_assert_eq!(used, n);
        prop_assert_eq!(&back, &frame);
        // Re-encoding the decoded frame gives the same bytes (the encoding is canonical).
        let mut again = Vec::new();
        back.encode(&mut again).unwrap();
        prop_assert_eq!(&again[..], &buf[3..]);
    }

    #[test]
    fn any_split_of_a_stream_decodes_the_same(seed in any::<u64>(), cuts in proptest::collection::vec(any::<u16>(), 0..8)) {
        let mut g = Gen::new(seed);
        let frames: Vec<Frame<'static>> = (0..1 + g.below(6)).map(|_| arb_frame(&mut g)).collect();
        let mut stream = Vec::new();
        for f in &frames {
            f.encode(&mut stream).unwrap();
        }
        // Feed the stream in chunks, the way a socket delivers it, keeping unconsumed bytes.
        let mut points: Vec<usize> = cuts.iter().map(|c| *c as usize % (stream.len() + 1)).collect();
        points.push(stream.len());
        points.sort_unstable();
        let mut pending: Vec<u8> = Vec::new();
        let mut got = Vec::new();
        let mut last = 0;
        for p in points {
            pending.extend_from_slice(&stream[last..p]);
            last = p;
            let mut it = FrameIter::new(&pending, ABS_MAX_BODY);
            for f in it.by_ref() {
                got.push(f.unwrap().into_owned());
            }
            let used = it.consumed();
            pending.drain(..used);
        }
        prop_assert!(pending.is_empty());
        prop_assert_eq!(got, frames);
    }

    #[test]
    fn decoder_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode(&bytes, DEFAULT_MAX_BODY);
        let mut with_magic = MAGIC.to_vec();
        with_magic.push(VERSION);
        with_magic.extend_from_slice(&bytes);
        let _ = decode(&with_magic, DEFAULT_MAX_BODY);
    }

    #[test]
    fn decoder_never_panics_on_mutated_frames(seed in any::<u64>(), at in any::<u16>(), val in any::<u8>()) {
        let frame = arb_frame(&mut Gen::new(seed));
        let mut buf = frame.to_bytes().unwrap();
        let i = at as usize % buf.len();
        buf[i] = val;
        // Re-seal so that the mutation reaches the body parser instead of stopping at the CRC.
        let crc = frame_crc(&buf[..12], &buf[HEADER_LEN..]);
        buf[12..16].copy_from_slice(&crc.to_le_bytes());
        if let Ok(Some((f, used))) = decode(&buf, ABS_MAX_BODY) {
            prop_assert!(used <= buf.len());
            // Whatever decodes must re-encode to a frame that decodes to the same thing.
            let again = f.to_bytes().unwrap();
            let (g, _) = decode(&again, ABS_MAX_BODY).unwrap().unwrap();
            prop_assert_eq!(f, g);
        }
    }
}

#[test]
fn every_known_frame_type_has_a_body() {
    for ft in crate::types::FrameType::KNOWN {
        let mut r = crate::wire::Reader::new(&[]);
        assert!(Body::get(*ft, &mut r).is_some(), "{ft} has no body parser");
    }
}
