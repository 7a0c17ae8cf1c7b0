//! The TLS certificate is reloaded on SIGHUP: new connections get the new certificate, a
//! connection made before keeps working, and a broken file keeps the old certificate.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use tern_protocol::{Body, Ping};
use tern_tests::{Node, WAIT};
use tern_tools::{Connection, Fingerprint, HelloParams, Rung, TransportOptions, Trust};

fn connect_pinned(node: &Node, pin: Fingerprint) -> Result<Connection, String> {
    // A device per connection: a second session of one device would replace the first.
    static DEVICE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let device = format!(
        "dev{}",
        DEVICE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let rung = Rung::parse(&format!("tls://{}", node.tls)).unwrap();
    let options = TransportOptions::new().with_trust(Trust::Pin(pin));
    let hello = HelloParams::new(node.token("alice", None, 300), device);
    Connection::connect_rung(&rung, &options, &hello, Duration::from_secs(5))
        .map_err(|e| e.to_string())
}

fn sighup(node: &Node) {
    let ok = Command::new("kill")
        .args(["-HUP", &node.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -HUP failed");
}

#[test]
fn sighup_reloads_the_certificate_without_dropping_connections() {
    let node = Node::start();
    let files = node.data_dir().join("tls");
    let old = Fingerprint::of_pem_file(&files.join("cert.pem")).unwrap();
    let mut before = connect_pinned(&node, old).unwrap();

    // Another node's dev certificate becomes this node's certificate.
    let other = Node::start();
    let new_dir = other.data_dir().join("tls");
    let new = Fingerprint::of_pem_file(&new_dir.join("cert.pem")).unwrap();
    assert_ne!(old, new);
    std::fs::copy(new_dir.join("key.pem"), files.join("key.pem")).unwrap();
    std::fs::copy(new_dir.join("cert.pem"), files.join("cert.pem")).unwrap();
    sighup(&node);

    let deadline = Instant::now() + WAIT;
    let mut after = loop {
        match connect_pinned(&node, new) {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < deadline, "new certificate not served: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    assert!(
        connect_pinned(&node, old).is_err(),
        "the old certificate is still served"
    );
    for c in [&mut before, &mut after] {
        let pong = c.request(Body::Ping(Ping { time: 5 }), WAIT).unwrap();
        assert_eq!(pong.body, Body::Pong(Ping { time: 5 }));
    }

    // A broken certificate file: the reload fails and the current certificate stays.
    std::fs::write(files.join("cert.pem"), b"not a certificate").unwrap();
    sighup(&node);
    std::thread::sleep(Duration::from_millis(300));
    assert!(connect_pinned(&node, new).is_ok());
}
