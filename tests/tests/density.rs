//! Memory per idle authenticated connection, measured on a real node: the growth of the
//! process's resident set while 1,000 sessions sit idle (kernel socket buffers are not part of
//! it). The target is under 1 KiB of user-space memory per connection.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tern_tests::{Node, WAIT};
use tern_tools::{Connection, HelloParams};

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn idle_authenticated_connections_are_small() {
    const N: usize = 1000;
    let node = Node::start_with(&["--cores", "1"]);
    let token = node.token("density", None, 3600);
    // Warm up: the first connections allocate pools, tables and the runtime's structures.
    let mut conns: Vec<Connection> = (0..50)
        .map(|i| {
            Connection::connect(
                &node.native,
                &HelloParams::new(token.clone(), format!("warm{i}")),
                WAIT,
            )
            .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(node.pid());
    for i in 0..N {
        conns.push(
            Connection::connect(
                &node.native,
                &HelloParams::new(token.clone(), format!("d{i}")),
                WAIT,
            )
            .unwrap(),
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(node.pid());
    let per_conn = (after.saturating_sub(before) * 1024) / N as u64;
    println!("ternd RSS {before} KiB -> {after} KiB with {N} more idle sessions: {per_conn} bytes per connection");
    let (_, metrics) = node.admin_get("/metrics");
    assert!(
        metrics.contains(&format!("tern_connections_open {}", N + 50)),
        "{metrics}"
    );
    // Generous bound against allocator noise; the measured value is printed above.
    assert!(per_conn < 4096, "{per_conn} bytes per idle connection");
}
