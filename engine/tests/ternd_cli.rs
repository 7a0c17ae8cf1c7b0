//! The `ternd` binary's command line: token minting, configuration errors, start-up on port 0.
//! (Also makes `cargo test` build `target/release/ternd`, which the end-to-end tests in
//! `tests/` run.)

#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TERND: &str = env!("CARGO_BIN_EXE_ternd");

#[test]
fn token_needs_a_secret_and_mints_a_verifiable_token() {
    let dir = tempfile::tempdir().unwrap();
    // No dev secret yet and no configured key: a clear error.
    let out = Command::new(TERND)
        .args(["token", "--user", "alice", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no JWT key configured"),
        "{out:?}"
    );
    // With a configured secret the token verifies with that secret.
    let secret = "0123456789abcdef0123456789abcdef";
    let out = Command::new(TERND)
        .args([
            "token",
            "--user",
            "alice",
            "--device",
            "phone",
            "--ttl",
            "60",
            "--jwt-secret",
            secret,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap();
    let auth = tern_engine::auth::Authenticator::hs256(secret.as_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let id = auth.verify(token.trim(), "phone", now).unwrap();
    assert_eq!(id.user, "alice");
}

#[test]
fn bad_config_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tern.toml");
    std::fs::write(&cfg, "natve = \"127.0.0.1:0\"\n").unwrap();
    let out = Command::new(TERND)
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("parsing config") && err.contains("natve"),
        "{err}"
    );
}

#[test]
fn starts_on_port_zero_and_writes_ports_json() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(TERND)
        .args([
            "--dev",
            "--native",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--cores",
            "1",
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ports = dir.path().join("ports.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    let v: serde_json::Value = loop {
        if let Ok(Ok(v)) = std::fs::read_to_string(&ports).map(|t| serde_json::from_str(&t)) {
            break v;
        }
        assert!(Instant::now() < deadline, "no ports.json");
        std::thread::sleep(Duration::from_millis(20));
    };
    let native: std::net::SocketAddr = v["native"].as_str().unwrap().parse().unwrap();
    let admin: std::net::SocketAddr = v["admin"].as_str().unwrap().parse().unwrap();
    assert_ne!(native.port(), 0);
    assert_ne!(admin.port(), 0);
    assert!(std::net::TcpStream::connect(native).is_ok());
    assert!(dir.path().join("dev-secret").exists());
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&native.to_string()) && stdout.contains("ternd token"),
        "{stdout}"
    );
}
