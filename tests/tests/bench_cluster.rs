//! ternbench's cluster scenarios against three real `ternd` processes on 127.0.0.1:
//! `p2p --cross-node` names every pair's users so that the two sit on different nodes (the
//! report's placement says so, and each node's admin API agrees), and every message arrives once
//! and in order; `failover` SIGKILLs one node and every client that was on it comes back at a
//! survivor (HELLO accepted, SYNC answered) while the other nodes' clients stay connected.
//!
//! The tests run one at a time: each starts three nodes on a 2-CPU machine.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tern_tests::{poll, serial, ternbench_bin, Node, CLUSTER_JWT_SECRET};

const CONVERGE: Duration = Duration::from_secs(10);

/// Three nodes of a configured size of 3; returns once each sees three members and takes
/// writes.
fn three_nodes() -> [Node; 3] {
    let size = ["--cluster-size", "3"];
    let a = Node::start_cluster(&[], &size);
    let b = Node::start_cluster(&[&a.cluster], &size);
    let c = Node::start_cluster(&[&a.cluster, &b.cluster], &size);
    let nodes = [a, b, c];
    let formed = poll(CONVERGE, || {
        nodes
            .iter()
            .all(|n| {
                let m = n.admin_json("/cluster/members");
                m["alive"] == 3 && m["writable"] == true
            })
            .then_some(())
    });
    if formed.is_none() {
        for n in &nodes {
            eprintln!("--- {} ---\n{}", n.cluster, n.log_text());
        }
        panic!("three nodes did not form a writable cluster within {CONVERGE:?}");
    }
    nodes
}

/// Runs ternbench with `--json` and the cluster's token secret; (exit status ok, report).
fn bench(args: &[&str]) -> (bool, Value, String) {
    let out = Command::new(ternbench_bin())
        .args([
            "--json",
            "--secret",
            CLUSTER_JWT_SECRET,
            "--workers",
            "2",
            "--sources",
            "4",
            "--timeout",
            "90",
        ])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ternbench: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let v = String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .unwrap_or(Value::Null);
    (out.status.success(), v, stderr)
}

#[test]
fn p2p_cross_node_puts_every_pair_on_two_nodes() {
    let _g = serial();
    let nodes = three_nodes();
    let (ok, v, err) = bench(&[
        "--target",
        &nodes[0].native,
        "p2p",
        "--pairs",
        "60",
        "--messages",
        "3000",
        "--admin",
        &nodes[0].admin,
        "--cross-node",
    ]);
    assert!(ok, "p2p --cross-node: {v} {err}");
    assert_eq!(v["placement"]["cross_node"], 60, "{v}");
    assert_eq!(v["placement"]["same_node"], 0, "{v}");
    // Half the conversations are sequenced by the sender's node, half by the receiver's.
    assert_eq!(v["placement"]["conv_on_sender_node"], 30, "{v}");
    assert_eq!(v["placement"]["conv_on_receiver_node"], 30, "{v}");
    assert_eq!(v["delivered"], 3000, "{v}");
    assert_eq!(v["violations"], Value::Array(Vec::new()), "{v}");
    let per_node = v["placement"]["users_per_node"]
        .as_object()
        .map_or(0, |m| m.len());
    assert_eq!(per_node, 3, "users on every node: {v}");

    // Without --cross-node the report still counts the pairs that cross.
    let (ok, v, err) = bench(&[
        "--target",
        &nodes[1].native,
        "p2p",
        "--pairs",
        "30",
        "--messages",
        "300",
        "--admin",
        &nodes[1].admin,
    ]);
    assert!(ok, "p2p: {v} {err}");
    let cross = v["placement"]["cross_node"].as_u64().unwrap_or(0);
    let same = v["placement"]["same_node"].as_u64().unwrap_or(0);
    assert_eq!(cross + same, 30, "{v}");
}

#[test]
fn failover_brings_every_client_of_the_killed_node_back() {
    let _g = serial();
    let [a, b, mut c] = three_nodes();
    let nodes = format!("{},{},{}", a.native, b.native, c.native);
    let victim = c.native.clone();
    let pid = c.pid().to_string();
    let (ok, v, err) = bench(&[
        "--target",
        &a.native,
        "failover",
        "--clients",
        "300",
        "--nodes",
        &nodes,
        "--victim",
        &victim,
        "--kill-pid",
        &pid,
        "--wait",
        "20",
    ]);
    // The node is gone; let the harness reap it.
    c.kill();
    assert!(ok, "failover: {v} {err}");
    assert_eq!(v["connected"], 300, "{v}");
    let affected = v["affected"].as_u64().unwrap_or(0);
    assert!(
        affected > 30,
        "a third of the clients sit on each node: {v}"
    );
    assert_eq!(v["back"], affected, "{v}");
    assert_eq!(v["failed"], 0, "{v}");
    assert_eq!(v["unaffected_disconnected"], 0, "{v}");
    // They came back at the survivors, none at the killed node.
    let back_at = v["back_at"].as_object().cloned().unwrap_or_default();
    assert!(!back_at.contains_key(&victim), "{v}");
    let total: u64 = back_at.values().filter_map(Value::as_u64).sum();
    assert_eq!(total, affected, "{v}");
    // Failure detection (about 1-1.5 s) bounds the first return from below.
    let last = v["last_back_secs"].as_f64().unwrap_or(0.0);
    assert!(last > 0.5 && last < 20.0, "{v}");
}
