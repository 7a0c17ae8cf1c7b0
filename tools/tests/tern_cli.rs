//! The `tern` client's command line parses and documents its commands (end-to-end use against a
//! node is tested in `tests/tests/cli.rs`; this test also makes `cargo test` build the binary).

#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn help_lists_the_commands() {
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in [
        "send", "watch", "sync", "history", "contacts", "--json", "--server", "--token", "--ca",
        "--pin", "--proxy",
    ] {
        assert!(help.contains(cmd), "{cmd} missing from:\n{help}");
    }
}

#[test]
fn a_token_is_required() {
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["contacts"])
        .env_remove("TERN_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--token"));
}
