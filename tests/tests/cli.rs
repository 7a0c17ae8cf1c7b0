//! The `tern` command-line client against a real node.

#![allow(clippy::unwrap_used)]

use std::process::Command;

use tern_tests::{tern_bin, Node};

fn tern(node: &Node, token: &str, args: &[&str]) -> String {
    let out = Command::new(tern_bin())
        .args(["--server", &node.native, "--token", token, "--json"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tern {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json_lines(s: &str) -> Vec<serde_json::Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn send_sync_history_contacts_watch() {
    let node = Node::start();
    let alice = node.token("alice", Some("cli"), 3600);
    let bob = node.token("bob", Some("cli"), 3600);
    let ack = json_lines(&tern(&node, &alice, &["send", "--to", "bob", "hi bob"]));
    assert_eq!(ack[0]["type"], "send_ack");
    assert_eq!(ack[0]["conv_seq"], 1);

    let state = node.data_dir().join("bob-cli-state.json");
    let synced = json_lines(&tern(
        &node,
        &bob,
        &["--state", state.to_str().unwrap(), "sync"],
    ));
    assert_eq!(synced[0]["body"], "hi bob");
    assert_eq!(synced[0]["sender"], "alice");
    assert_eq!(synced.last().unwrap()["type"], "synced");
    // The position was saved: a second sync has nothing new.
    let again = json_lines(&tern(
        &node,
        &bob,
        &["--state", state.to_str().unwrap(), "sync"],
    ));
    assert_eq!(again.len(), 1);

    let hist = json_lines(&tern(&node, &bob, &["history", "--with", "alice"]));
    assert_eq!(hist.len(), 1);
    assert_eq!(hist[0]["conv_seq"], 1);
    let contacts = json_lines(&tern(&node, &bob, &["contacts"]));
    assert_eq!(contacts[0]["conv"], "alice");
    assert_eq!(contacts[0]["unread"], 1);
    assert_eq!(contacts.last().unwrap()["total_unread"], 1);

    // watch prints a message that arrives while it runs (bounded by --count and --seconds).
    let bob_any_device = node.token("bob", None, 3600);
    let watcher = Command::new(tern_bin())
        .args([
            "--server",
            &node.native,
            "--token",
            &bob_any_device,
            "--json",
            "--device",
            "cli2",
            "watch",
            "--count",
            "2",
            "--seconds",
            "20",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    tern(&node, &alice, &["send", "--to", "bob", "live"]);
    let out = watcher.wait_with_output().unwrap();
    let events = json_lines(&String::from_utf8(out.stdout).unwrap());
    let bodies: Vec<_> = events
        .iter()
        .filter(|e| e["type"] == "message")
        .map(|e| e["body"].as_str().unwrap().to_owned())
        .collect();
    // The watcher's SYNC hands out the stored message, the PUSH the live one.
    assert_eq!(bodies, ["hi bob", "live"]);
}

#[test]
fn room_posts_and_shows_recent_messages() {
    let node = Node::start();
    let alice = node.token("alice", Some("cli"), 3600);
    let bob = node.token("bob", Some("cli"), 3600);
    // A room lives while it has members: bob stays in it while alice posts.
    let watcher = Command::new(tern_bin())
        .args(["--server", &node.native, "--token", &bob, "--json"])
        .args(["room", "lobby", "--count", "2", "--seconds", "20"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let posted = json_lines(&tern(
        &node,
        &alice,
        &["room", "lobby", "--say", "one", "--say", "two"],
    ));
    assert_eq!(posted[0]["type"], "posted");
    assert_eq!(posted[1]["conv_seq"], 2);
    let out = watcher.wait_with_output().unwrap();
    assert!(out.status.success());
    let seen = json_lines(&String::from_utf8(out.stdout).unwrap());
    let bodies: Vec<&str> = seen.iter().filter_map(|m| m["body"].as_str()).collect();
    assert_eq!(bodies, ["one", "two"]);
}

#[test]
fn recall_takes_a_message_back() {
    let node = Node::start();
    let alice = node.token("alice", Some("cli"), 3600);
    let bob = node.token("bob", Some("cli"), 3600);
    tern(&node, &alice, &["send", "--to", "bob", "oops"]);
    let out = json_lines(&tern(&node, &alice, &["recall", "--with", "bob", "1"]));
    assert_eq!(out[0]["type"], "recalled");
    assert_eq!(out[0]["event_seq"], 2);
    // bob's history: the tombstone without its text, then the event.
    let hist = json_lines(&tern(&node, &bob, &["history", "--with", "alice"]));
    assert_eq!(hist.len(), 2, "{hist:?}");
    assert_eq!(hist[0]["conv_seq"], 1);
    assert_eq!(hist[0]["body"], "");
    assert_eq!(hist[1]["conv_seq"], 2);
}

#[test]
fn recall_takes_a_group_message_back() {
    let node = Node::start();
    let alice = node.token("alice", Some("cli"), 3600);
    let bob = node.token("bob", Some("cli"), 3600);
    let created = json_lines(&tern(
        &node,
        &alice,
        &["group", "create", "club", "--member", "bob"],
    ));
    let g = created[0]["group"].as_str().unwrap().to_owned();
    let sent = json_lines(&tern(&node, &alice, &["group", "send", &g, "oops"]));
    let seq_n = sent[0]["conv_seq"].as_u64().unwrap();
    let seq = seq_n.to_string();
    // A member may not recall the owner's message: the command fails with the node's refusal.
    let refused = Command::new(tern_bin())
        .args(["--server", &node.native, "--token", &bob, "--json"])
        .args(["recall", "--group", &g, &seq])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("FORBIDDEN"), "{err}");
    let out = json_lines(&tern(&node, &alice, &["recall", "--group", &g, &seq]));
    assert_eq!(out[0]["type"], "recalled");
    assert_eq!(out[0]["kind"], "group");
    assert_eq!(out[0]["conv"], g.as_str());
    // bob's history of the group: the message is a tombstone.
    let hist = json_lines(&tern(&node, &bob, &["group", "history", &g]));
    let recalled = hist
        .iter()
        .find(|m| m["conv_seq"].as_u64() == Some(seq_n))
        .unwrap_or_else(|| panic!("no #{seq} in {hist:?}"));
    assert_eq!(recalled["body"], "", "{hist:?}");
}
