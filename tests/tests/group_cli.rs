//! Groups from the client side against a real node: `tern group ...` (create, add, send, watch,
//! sync, history, list, info, the admin operations, a refusal's exit status) and the SDK's group
//! calls (every operation, group events through `next_event`, a refused send, group sends queued
//! across a crash, read-diffused messages held once synced).

#![allow(clippy::unwrap_used)]

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tern_protocol::{ConvKind, ErrorCode, GroupInfo, GroupMember, Message, MessageKind, Role};
use tern_tests::{tern_bin, Node, WAIT};
use tern_tools::{Client, ClientConfig, Event, GroupEventKind, SendError};

fn tern_run(node: &Node, token: &str, args: &[&str]) -> Output {
    Command::new(tern_bin())
        .args(["--server", &node.native, "--token", token, "--json"])
        .args(args)
        .output()
        .unwrap()
}

fn tern(node: &Node, token: &str, args: &[&str]) -> Vec<serde_json::Value> {
    let out = tern_run(node, token, args);
    assert!(
        out.status.success(),
        "tern {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    json_lines(&String::from_utf8(out.stdout).unwrap())
}

fn json_lines(s: &str) -> Vec<serde_json::Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A refused command: exit status 3, the code on stderr and as a JSON error on stdout.
fn refused(node: &Node, token: &str, args: &[&str], code: &str) {
    let out = tern_run(node, token, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "tern {args:?}: {stderr}");
    assert!(stderr.contains(code), "tern {args:?}: {stderr}");
    let lines = json_lines(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(lines.last().unwrap()["type"], "error", "{lines:?}");
    assert_eq!(lines.last().unwrap()["code"], code, "{lines:?}");
}

#[test]
fn cli_creates_adds_sends_and_members_see_it() {
    let node = Node::start();
    let alice = node.token("alice", Some("cli"), 3600);
    let carol = node.token("carol", Some("cli"), 3600);
    let mallory = node.token("mallory", Some("cli"), 3600);

    let created = tern(
        &node,
        &alice,
        &["group", "create", "club", "--member", "carol"],
    );
    assert_eq!(created[0]["type"], "group_created");
    assert_eq!(created[0]["owner"], "alice");
    assert_eq!(created[0]["member_count"], 2);
    let g = created[0]["group"].as_str().unwrap().to_owned();

    // bob watches before he is a member: the ADDED event, then the message.
    let bob_any = node.token("bob", None, 3600);
    let watcher = Command::new(tern_bin())
        .args(["--server", &node.native, "--token", &bob_any, "--json"])
        .args(["--device", "w", "watch", "--count", "2", "--seconds", "20"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let added = tern(&node, &alice, &["group", "add", &g, "bob"]);
    assert_eq!(added[0]["type"], "group_ok");
    assert_eq!(added[0]["op"], "add");
    let ack = tern(&node, &alice, &["group", "send", &g, "hello group"]);
    assert_eq!(ack[0]["type"], "send_ack");
    assert_eq!(ack[0]["conv_seq"], 3, "CREATED, ADDED, then the message");

    let out = watcher.wait_with_output().unwrap();
    assert!(out.status.success());
    let seen = json_lines(&String::from_utf8(out.stdout).unwrap());
    let seen: Vec<_> = seen
        .iter()
        .filter(|e| e["type"] == "group_event" || e["type"] == "message")
        .collect();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0]["type"], "group_event");
    assert_eq!(seen[0]["event"], "added");
    assert_eq!(seen[0]["users"], serde_json::json!(["bob"]));
    assert_eq!(seen[0]["group"], g.as_str());
    assert_eq!(seen[1]["body"], "hello group");
    assert_eq!(seen[1]["conv"], g.as_str());
    assert_eq!(seen[1]["conv_kind"], ConvKind::GROUP.0);

    // carol, a member from the start, syncs: both events and the message.
    let state = node.data_dir().join("carol-cli-state.json");
    let synced = tern(&node, &carol, &["--state", state.to_str().unwrap(), "sync"]);
    let kinds: Vec<String> = synced
        .iter()
        .filter(|l| l["type"] != "synced")
        .map(|l| {
            if l["type"] == "group_event" {
                l["event"].as_str().unwrap().to_owned()
            } else {
                l["body"].as_str().unwrap().to_owned()
            }
        })
        .collect();
    assert_eq!(kinds, ["created", "added", "hello group"]);

    // History, as JSON and for people.
    let hist = tern(&node, &bob_any, &["group", "history", &g]);
    let seqs: Vec<u64> = hist
        .iter()
        .map(|l| l["conv_seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(hist[2]["body"], "hello group");
    let text = Command::new(tern_bin())
        .args(["--server", &node.native, "--token", &bob_any])
        .args(["group", "history", &g])
        .output()
        .unwrap();
    assert!(text.status.success());
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains("alice created the group with carol"),
        "{text}"
    );
    assert!(text.contains("alice added bob"), "{text}");
    assert!(text.contains("alice/cli: hello group"), "{text}");

    // A non-member is refused clearly and nothing is stored.
    refused(
        &node,
        &mallory,
        &["group", "send", &g, "let me in"],
        "FORBIDDEN",
    );
    refused(&node, &mallory, &["group", "history", &g], "FORBIDDEN");
    refused(
        &node,
        &alice,
        &["group", "send", "g-nope", "x"],
        "NOT_FOUND",
    );
    assert_eq!(tern(&node, &alice, &["group", "history", &g]).len(), 3);

    // list and info.
    let list = tern(&node, &bob_any, &["group", "list"]);
    assert_eq!(list[0]["type"], "group");
    assert_eq!(list[0]["group"], g.as_str());
    assert_eq!(list[0]["name"], "club");
    assert_eq!(list[0]["members"], 3);
    assert_eq!(list[1]["type"], "groups_end");
    assert_eq!(list[1]["count"], 1);
    let info = tern(&node, &carol, &["group", "info", &g]);
    assert_eq!(info[0]["type"], "group_info");
    let mut users: Vec<&str> = info[0]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"].as_str().unwrap())
        .collect();
    users.sort_unstable();
    assert_eq!(users, ["alice", "bob", "carol"]);
}

#[test]
fn cli_admin_operations() {
    let node = Node::start();
    let alice = node.token("alice", Some("cli"), 3600);
    let bob = node.token("bob", Some("cli"), 3600);
    let carol = node.token("carol", Some("cli"), 3600);
    let created = tern(
        &node,
        &alice,
        &["group", "create", "club", "--member", "bob,carol"],
    );
    let g = created[0]["group"].as_str().unwrap().to_owned();

    tern(&node, &alice, &["group", "rename", &g, "hiking"]);
    tern(
        &node,
        &alice,
        &["group", "update", &g, "--announcement", "Saturday 8:00"],
    );
    tern(&node, &alice, &["group", "role", &g, "admin", "bob"]);
    // bob, now an admin, mutes carol for ten minutes: her sends are refused until unmuted.
    tern(&node, &bob, &["group", "mute", &g, "carol", "--for", "600"]);
    refused(&node, &carol, &["group", "send", &g, "shh"], "FORBIDDEN");
    tern(&node, &bob, &["group", "unmute", &g, "carol"]);
    tern(&node, &carol, &["group", "send", &g, "back"]);
    // Only admins and the owner change the group.
    refused(&node, &carol, &["group", "rename", &g, "mine"], "FORBIDDEN");

    let info = tern(&node, &carol, &["group", "info", &g]);
    assert_eq!(info[0]["name"], "hiking");
    assert_eq!(info[0]["announcement"], "Saturday 8:00");
    let role_of = |info: &serde_json::Value, user: &str| {
        info["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["user"] == user)
            .map(|m| m["role"].as_str().unwrap().to_owned())
    };
    assert_eq!(role_of(&info[0], "bob").as_deref(), Some("admin"));

    // Transfer, leave, remove, disband.
    refused(&node, &alice, &["group", "leave", &g], "FORBIDDEN");
    tern(&node, &alice, &["group", "transfer", &g, "bob"]);
    tern(&node, &alice, &["group", "leave", &g]);
    let info = tern(&node, &bob, &["group", "info", &g]);
    assert_eq!(info[0]["owner"], "bob");
    assert_eq!(role_of(&info[0], "alice"), None);
    tern(&node, &bob, &["group", "remove", &g, "carol"]);
    let hist = tern(&node, &bob, &["group", "history", &g]);
    let events: Vec<&str> = hist
        .iter()
        .filter(|l| l["type"] == "group_event")
        .map(|l| l["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        [
            "created",
            "updated",
            "updated",
            "role_set",
            "muted",
            "unmuted",
            "transferred",
            "left",
            "removed"
        ]
    );
    tern(&node, &bob, &["group", "disband", &g]);
    refused(&node, &bob, &["group", "info", &g], "NOT_FOUND");
    let list = tern(&node, &bob, &["group", "list"]);
    assert_eq!(list[0]["type"], "groups_end");
    assert_eq!(list[0]["count"], 0);
}

fn config(
    node: &Node,
    user: &str,
    device: &str,
    state: Option<std::path::PathBuf>,
) -> ClientConfig {
    let mut cfg = ClientConfig::new(
        node.native.clone(),
        node.token(user, Some(device), 3600),
        device,
    );
    cfg.state_path = state;
    cfg.retransmit_after = Duration::from_millis(500);
    cfg.backoff_min = Duration::from_millis(50);
    cfg.backoff_max = Duration::from_millis(500);
    cfg.ack_delay = Duration::from_millis(50);
    cfg
}

/// The first event that `pick` accepts, within `within`.
fn wait_for<T>(
    client: &Client,
    within: Duration,
    mut pick: impl FnMut(Event) -> Option<T>,
) -> Option<T> {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if let Some(e) = client.next_event(Duration::from_millis(50)) {
            if let Some(t) = pick(e) {
                return Some(t);
            }
        }
    }
    None
}

fn connected(c: &Client) {
    assert!(
        wait_for(c, WAIT, |e| matches!(e, Event::Synced { .. }).then_some(())).is_some(),
        "no session"
    );
}

/// Group messages and events handed out within `within` (until `n` arrived).
fn group_entries(c: &Client, n: usize, within: Duration) -> Vec<Message<'static>> {
    let end = Instant::now() + within;
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < end {
        match c.next_event(Duration::from_millis(50)) {
            Some(Event::Message(m)) if m.conv.kind == ConvKind::GROUP => out.push(m),
            Some(Event::GroupEvent { message, .. }) => out.push(message),
            _ => {}
        }
    }
    out
}

#[test]
fn sdk_covers_every_group_operation() {
    let node = Node::start();
    let alice = Client::start(config(&node, "alice", "phone", None));
    let bob = Client::start(config(&node, "bob", "phone", None));
    let mallory = Client::start(config(&node, "mallory", "phone", None));
    for c in [&alice, &bob, &mallory] {
        connected(c);
    }

    let info = alice.group_create("club", &["bob"], WAIT).unwrap();
    let g = info.group.to_string();
    assert_eq!((info.owner.as_ref(), info.member_count), ("alice", 2));
    let ev = wait_for(&bob, WAIT, |e| match e {
        Event::GroupEvent { message, event } => Some((message, event)),
        _ => None,
    })
    .expect("bob gets the CREATED event");
    assert_eq!(ev.1.kind, GroupEventKind::Created);
    assert_eq!(ev.1.users, ["bob"]);
    assert_eq!(
        (ev.0.conv.id.as_ref(), ev.0.sender.as_ref()),
        (g.as_str(), "alice")
    );

    let ack = alice
        .send_group_wait(&g, MessageKind::TEXT, b"hi all".to_vec(), WAIT)
        .unwrap();
    assert_eq!(ack.conv_seq, 2);
    let m = wait_for(&bob, WAIT, |e| match e {
        Event::Message(m) => Some(m),
        _ => None,
    })
    .expect("bob gets the message");
    assert_eq!(
        (m.conv.kind, m.conv.id.as_ref()),
        (ConvKind::GROUP, g.as_str())
    );
    assert_eq!(m.body.as_ref(), b"hi all");

    // A non-member's send is refused with the node's code, and so are its other requests.
    match mallory.send_group_wait(&g, MessageKind::TEXT, b"let me in".to_vec(), WAIT) {
        Err(SendError::Server { code, .. }) => assert_eq!(code, ErrorCode::FORBIDDEN),
        other => panic!("expected FORBIDDEN, got {other:?}"),
    }
    assert!(matches!(
        mallory.group_get(&g, WAIT),
        Err(SendError::Server {
            code: ErrorCode::FORBIDDEN,
            ..
        })
    ));

    alice
        .group_update(&g, Some("hiking"), Some("Saturday"), None, WAIT)
        .unwrap();
    alice.group_add(&g, &["carol", "dave"], WAIT).unwrap();
    alice
        .group_set_role(&g, &["bob"], Role::ADMIN, WAIT)
        .unwrap();
    bob.group_mute(&g, &["carol"], u64::MAX, WAIT).unwrap();
    let info = bob.group_get(&g, WAIT).unwrap();
    assert_eq!(
        (info.name.as_ref(), info.announcement.as_ref()),
        ("hiking", "Saturday")
    );
    assert_eq!(info.member_count, 4);
    fn member(info: &GroupInfo<'static>, u: &str) -> Option<GroupMember<'static>> {
        info.members.iter().find(|m| m.user == u).cloned()
    }
    assert_eq!(member(&info, "bob").unwrap().role, Role::ADMIN);
    assert_eq!(member(&info, "carol").unwrap().muted_until, u64::MAX);
    bob.group_unmute(&g, &["carol"], WAIT).unwrap();
    bob.group_remove(&g, &["dave"], WAIT).unwrap();
    let info = alice.group_get(&g, WAIT).unwrap();
    assert_eq!(member(&info, "carol").unwrap().muted_until, 0);
    assert!(member(&info, "dave").is_none());

    // Listing pages: bob in two groups, one per page.
    let second = bob.group_create("second", &[], WAIT).unwrap();
    let first_page = bob.group_list_page("", 1, WAIT).unwrap();
    assert_eq!(first_page.groups.len(), 1);
    assert!(!first_page.next_cursor.is_empty());
    let all = bob.group_list(WAIT).unwrap();
    let mut ids: Vec<String> = all.iter().map(|s| s.group.to_string()).collect();
    ids.sort();
    let mut want = vec![g.clone(), second.group.to_string()];
    want.sort();
    assert_eq!(ids, want);

    // The events reach bob in order, decoded.
    let events: Vec<GroupEventKind> = {
        let end = Instant::now() + WAIT;
        let mut out = Vec::new();
        while out.len() < 6 && Instant::now() < end {
            if let Some(Event::GroupEvent { message, event }) =
                bob.next_event(Duration::from_millis(50))
            {
                if message.conv.id == g.as_str() {
                    out.push(event.kind);
                }
            }
        }
        out
    };
    assert_eq!(
        events,
        [
            GroupEventKind::Updated,
            GroupEventKind::Added,
            GroupEventKind::RoleSet,
            GroupEventKind::Muted,
            GroupEventKind::Unmuted,
            GroupEventKind::Removed,
        ]
    );

    alice.group_transfer(&g, "bob", WAIT).unwrap();
    alice.group_leave(&g, WAIT).unwrap();
    let page = bob.group_history(&g, 0, 0, WAIT).unwrap();
    let seqs: Vec<u64> = page.messages.iter().map(|m| m.conv_seq).collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<u64>>());
    let page = bob.group_history(&g, 3, 1, WAIT).unwrap();
    assert_eq!(page.messages.len(), 1);
    assert_eq!(page.messages[0].conv_seq, 2);
    assert!(page.more);
    bob.group_disband(&g, WAIT).unwrap();
    assert!(matches!(
        bob.group_get(&g, WAIT),
        Err(SendError::Server {
            code: ErrorCode::NOT_FOUND,
            ..
        })
    ));
}

#[test]
fn sdk_group_sends_survive_a_crash_and_read_diffused_messages_come_once() {
    // Every group of more than one member uses read diffusion: no inbox entries at all.
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("tern.toml");
    std::fs::write(&cfg_path, "[limits]\ngroup_write_diffusion_max = 1\n").unwrap();
    let mut node = Node::start_with(&["--config", cfg_path.to_str().unwrap()]);
    let state = dir.path().join("bob-phone.json");

    let alice = Client::start(config(&node, "alice", "phone", None));
    connected(&alice);
    let g = alice
        .group_create("big", &["bob"], WAIT)
        .unwrap()
        .group
        .to_string();

    // The node dies; alice's sends wait in her queue and go out (same ids) after the restart.
    node.kill();
    let pending: Vec<_> = (0..3)
        .map(|i| {
            alice
                .send_group(&g, MessageKind::TEXT, format!("m{i}").into_bytes())
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    node.restart();
    let mut acked = Vec::new();
    let end = Instant::now() + Duration::from_secs(20);
    while acked.len() < pending.len() && Instant::now() < end {
        if let Some(Event::SendAcked { local_seq, ack }) =
            alice.next_event(Duration::from_millis(50))
        {
            if pending.iter().any(|p| p.local_seq == local_seq) {
                assert_eq!(ack.inbox_seq, 0, "read diffusion");
                acked.push(ack.conv_seq);
            }
        }
    }
    acked.sort_unstable();
    assert_eq!(
        acked,
        [2, 3, 4],
        "every queued group message acknowledged once"
    );
    let page = alice.group_history(&g, 0, 0, WAIT).unwrap();
    assert_eq!(
        page.messages.len(),
        4,
        "CREATED and three messages: no duplicates"
    );

    // bob's device was never online: one SYNC brings the event that added him and the messages.
    let bob = Client::start(config(&node, "bob", "phone", Some(state.clone())));
    let got = group_entries(&bob, 4, WAIT);
    let bodies: Vec<&[u8]> = got.iter().map(|m| m.body.as_ref()).collect();
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(got[0].kind, MessageKind::GROUP_EVENT);
    assert_eq!(&bodies[1..], [b"m0", b"m1", b"m2"]);
    assert!(got.iter().all(|m| m.inbox_seq == 0));
    // The client tells the node it holds that page (a PUSH_ACK even though its inbox position
    // did not move), so a restarted client gets none of it again.
    std::thread::sleep(Duration::from_millis(300));
    bob.stop();
    let bob = Client::start(config(&node, "bob", "phone", Some(state)));
    connected(&bob);
    assert!(
        group_entries(&bob, 1, Duration::from_millis(800)).is_empty(),
        "read-diffused messages handed out again after a restart"
    );
}

#[test]
fn group_read_and_receipts_from_the_cli() {
    let node = Node::start();
    let alice = node.token("alice", Some("cli"), 3600);
    let bob = node.token("bob", Some("cli"), 3600);
    let created = tern(
        &node,
        &alice,
        &["group", "create", "club", "--member", "bob"],
    );
    let g = created[0]["group"].as_str().unwrap().to_owned();
    let sent = tern(&node, &alice, &["group", "send", &g, "read me"]);
    let seq = sent[0]["conv_seq"].as_u64().unwrap().to_string();
    let before = tern(&node, &alice, &["group", "receipts", &g, &seq]);
    assert_eq!(before[0]["messages"][0]["read"], 0, "{before:?}");
    let read = tern(&node, &bob, &["group", "read", &g, &seq]);
    assert_eq!(read[0]["type"], "read");
    let after = tern(&node, &alice, &["group", "receipts", &g, &seq, "--readers"]);
    let m = &after[0]["messages"][0];
    assert_eq!(m["conv_seq"].as_u64().map(|n| n.to_string()), Some(seq));
    assert_eq!(m["read"], 1, "{after:?}");
    assert_eq!(m["readers"], serde_json::json!(["bob"]));
}
