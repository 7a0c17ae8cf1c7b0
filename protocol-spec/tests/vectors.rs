//! Runs every test vector in `protocol-spec/vectors/` through the codec, and checks that the
//! files are exactly what the catalogue in `src/vectors.rs` generates. `TERN_BLESS=1` rewrites
//! the files from the catalogue (do it in the same commit as a wire change).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;

use tern_protocol::vectors::{catalogue, outcome, parse_hex, render_file, Expect};
use tern_protocol::{ErrorCode, FrameType, DEFAULT_MAX_BODY};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("vectors")
}

#[test]
fn vector_files_match_the_catalogue() {
    let bless = std::env::var_os("TERN_BLESS").is_some();
    let mut names = BTreeSet::new();
    for v in catalogue() {
        assert!(
            names.insert(format!("{}.hex", v.name)),
            "duplicate vector {}",
            v.name
        );
        let path = dir().join(format!("{}.hex", v.name));
        let want = render_file(&v);
        if bless {
            std::fs::write(&path, &want).unwrap();
            continue;
        }
        let have = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run with TERN_BLESS=1 to generate)",
                path.display()
            )
        });
        assert_eq!(have, want, "{} differs from the catalogue", path.display());
    }
    let on_disk: BTreeSet<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".hex"))
        .collect();
    assert_eq!(on_disk, names, "stale or missing vector files");
}

#[test]
fn every_vector_file_decodes_as_it_says() {
    let mut checked = 0;
    for v in catalogue() {
        let text = std::fs::read_to_string(dir().join(format!("{}.hex", v.name))).unwrap();
        let bytes = parse_hex(&text).unwrap();
        assert_eq!(bytes, v.bytes, "{}", v.name);
        // The expectation written in the file's comment agrees with the catalogue's.
        let expect_line = text.lines().find(|l| l.starts_with("# expect: ")).unwrap();
        match (&v.expect, outcome(&bytes, DEFAULT_MAX_BODY)) {
            (Expect::Frame(want), Ok(got)) => {
                assert_eq!(&got, want, "{}", v.name);
                assert_eq!(expect_line, format!("# expect: ok {}", want.frame_type()));
            }
            (Expect::Error(code), Err(got)) => {
                assert_eq!(got, *code, "{}", v.name);
                assert!(expect_line.contains(&format!("error {code}")), "{}", v.name);
            }
            (want, got) => panic!("{}: expected {want:?}, decoded {got:?}", v.name),
        }
        checked += 1;
    }
    assert!(checked >= 50, "only {checked} vectors");
}

#[test]
fn every_frame_type_has_a_valid_vector_and_every_decode_error_an_invalid_one() {
    let cat = catalogue();
    for ft in FrameType::KNOWN {
        assert!(
            cat.iter()
                .any(|v| matches!(&v.expect, Expect::Frame(f) if f.frame_type() == *ft)),
            "no vector for {ft}"
        );
    }
    for code in [
        ErrorCode::BAD_CRC,
        ErrorCode::TRUNCATED,
        ErrorCode::FRAME_TOO_LARGE,
        ErrorCode::UNKNOWN_FRAME_TYPE,
        ErrorCode::UNSUPPORTED_VERSION,
        ErrorCode::BAD_MAGIC,
        ErrorCode::UNSUPPORTED_FLAGS,
        ErrorCode::BAD_FRAME,
    ] {
        assert!(
            cat.iter().any(|v| v.expect == Expect::Error(code)),
            "no invalid vector for {code}"
        );
    }
}
