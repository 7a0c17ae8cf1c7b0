//! Fuzzes the frame decoder: arbitrary bytes, read as a stream in one go, must never panic,
//! and every frame that decodes must re-encode to bytes that decode to the same frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_protocol::{decode, FrameIter, ABS_MAX_BODY, DEFAULT_MAX_BODY};

fuzz_target!(|data: &[u8]| {
    for limit in [DEFAULT_MAX_BODY, ABS_MAX_BODY] {
        for frame in FrameIter::new(data, limit) {
            let Ok(frame) = frame else { break };
            let bytes = frame.to_bytes().expect("decoded frames re-encode");
            let (again, used) = decode(&bytes, ABS_MAX_BODY)
                .expect("re-encoded frame decodes")
                .expect("re-encoded frame is complete");
            assert_eq!(used, bytes.len());
            assert_eq!(again, frame);
        }
    }
});
