//! terndump reads the spec's test vectors: each valid vector decodes to its frame type, each
//! invalid one is reported with the error code the spec gives it, and the exit status says
//! whether anything failed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use tern_protocol::vectors::{catalogue, Expect};

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../protocol-spec/vectors")
}

#[test]
fn every_vector_decodes_as_the_spec_says() {
    for v in catalogue() {
        let path = vectors_dir().join(format!("{}.hex", v.name));
        let out = Command::new(env!("CARGO_BIN_EXE_terndump"))
            .args(["--json", "--no-summary", "decode"])
            .arg(&path)
            .output()
            .unwrap();
        let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        match &v.expect {
            Expect::Frame(f) => {
                assert!(out.status.success(), "{}: {lines:?}", v.name);
                assert_eq!(lines.len(), 1, "{}: {lines:?}", v.name);
                assert_eq!(lines[0]["type"], f.frame_type().to_string(), "{}", v.name);
                assert_eq!(lines[0]["request_id"], f.request_id, "{}", v.name);
                assert_eq!(lines[0]["offset"], 0);
            }
            Expect::Error(code) => {
                assert_eq!(
                    out.status.code(),
                    Some(1),
                    "{}: errors make the exit status 1",
                    v.name
                );
                let first = lines
                    .iter()
                    .find(|l| l.get("error").is_some())
                    .unwrap_or_else(|| panic!("{}: {lines:?}", v.name));
                assert_eq!(first["error"], code.to_string(), "{}: {lines:?}", v.name);
                assert_eq!(first["code"], code.0, "{}", v.name);
                assert_eq!(first["offset"], 0, "{}", v.name);
            }
        }
    }
}

#[test]
fn a_stream_of_all_vectors_is_decoded_with_resynchronisation_and_a_summary() {
    let mut all = Vec::new();
    for v in catalogue() {
        all.extend_from_slice(&v.bytes);
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("all.bin");
    std::fs::write(&raw, &all).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_terndump"))
        .args(["decode", "--raw"])
        .arg(&raw)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("-- summary"), "{text}");
    assert!(text.contains("resynchronised on frame magic"), "{text}");
    // Frames after the garbage vector are still found.
    let valid = catalogue()
        .iter()
        .filter(|v| matches!(v.expect, Expect::Frame(_)))
        .count();
    let decoded = text.lines().filter(|l| l.contains(" #")).count();
    assert_eq!(
        decoded, valid,
        "valid frames decoded from the stream:\n{text}"
    );
}
