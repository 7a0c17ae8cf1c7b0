//! The offline push hook against a real HTTP receiver started by the test: a message to a user
//! with no device online is POSTed as signed JSON (HMAC-SHA256 checked here), retried after a
//! 500; quiet when the user chose BUSY; not sent for muted conversations, users online, or users
//! without a token; group messages notify offline members (in large groups only the mentioned);
//! the `tern push-token` and `tern mute` commands.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tern_protocol::{MessageKind, PresenceStatus};
use tern_tests::{tern_bin, Node, WAIT};
use tern_tools::{Client, ClientConfig, Event};

const SECRET: &str = "push-test-secret-0123456789";

/// One request the receiver got.
#[derive(Debug)]
struct Hook {
    path: String,
    signature: String,
    body: Vec<u8>,
}

/// A webhook receiver: answers each request with the next status of `statuses` (then 200),
/// and hands every request to the test. Serves at most `max` requests.
fn receiver(statuses: Vec<u16>, max: usize) -> (String, mpsc::Receiver<Hook>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hooks/tern", l.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for i in 0..max {
            let Ok((mut s, _)) = l.accept() else { return };
            s.set_read_timeout(Some(WAIT)).unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let (head, body_start) = loop {
                let n = s.read(&mut chunk).unwrap();
                assert!(n > 0, "request cut short");
                buf.extend_from_slice(&chunk[..n]);
                if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break (String::from_utf8(buf[..p].to_vec()).unwrap(), p + 4);
                }
            };
            let header = |name: &str| {
                head.lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
                    })
                    .unwrap_or_default()
            };
            let len: usize = header("content-length").parse().unwrap();
            while buf.len() < body_start + len {
                let n = s.read(&mut chunk).unwrap();
                assert!(n > 0);
                buf.extend_from_slice(&chunk[..n]);
            }
            let status = statuses.get(i).copied().unwrap_or(200);
            write!(
                s,
                "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let path = head.split(' ').nth(1).unwrap_or_default().to_owned();
            let hook = Hook {
                path,
                signature: header("x-tern-signature"),
                body: buf[body_start..body_start + len].to_vec(),
            };
            if tx.send(hook).is_err() {
                return;
            }
        }
    });
    (url, rx)
}

fn verify(h: &Hook) -> serde_json::Value {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&h.body);
    let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(h.signature, want, "signature over the exact body");
    assert_eq!(h.path, "/hooks/tern");
    serde_json::from_slice(&h.body).unwrap()
}

fn client(node: &Node, user: &str, device: &str) -> Client {
    let c = Client::start(ClientConfig::new(
        node.native.clone(),
        node.token(user, Some(device), 3600),
        device,
    ));
    let end = Instant::now() + WAIT;
    while Instant::now() < end {
        if let Some(Event::Connected { .. }) = c.next_event(Duration::from_millis(50)) {
            return c;
        }
    }
    panic!("{user} did not connect");
}

fn send(c: &Client, to: &str, text: &str) {
    if let Err(e) = c.send_wait(to, MessageKind::TEXT, text.as_bytes().to_vec(), WAIT) {
        panic!("sending {text:?} to {to}: {e}");
    }
}

/// The notifications of the next POST (waiting at most `wait`).
fn next_notifications(rx: &mpsc::Receiver<Hook>, wait: Duration) -> Option<Vec<serde_json::Value>> {
    let h = rx.recv_timeout(wait).ok()?;
    let v = verify(&h);
    Some(v["notifications"].as_array().unwrap().clone())
}

#[test]
fn offline_messages_are_posted_signed_retried_quiet_and_muted() {
    // The first POST gets a 500: the hook must retry it.
    let (url, rx) = receiver(vec![500], 64);
    let node = Node::start_with(&["--push-webhook", &url, "--push-secret", SECRET]);
    let alice = client(&node, "alice", "phone");
    let bob = client(&node, "bob", "phone");
    bob.register_push_token("fcm", "bob-phone-token", WAIT)
        .unwrap();
    // Online: no notification.
    send(&alice, "bob", "you are online");
    bob.stop();
    send(&alice, "bob", "hello bob");
    let first = rx.recv_timeout(WAIT).expect("a POST");
    let retried = rx.recv_timeout(WAIT).expect("the retry after the 500");
    assert_eq!(first.body, retried.body, "the same batch is retried");
    let v = verify(&retried);
    let n = &v["notifications"].as_array().unwrap()[..];
    assert_eq!(n.len(), 1, "{v}");
    let n = &n[0];
    assert_eq!(n["user"], "bob");
    assert_eq!(n["conv"]["kind"], "direct");
    assert_eq!(n["conv"]["id"], "alice");
    assert_eq!(n["sender"], "alice");
    assert_eq!(n["preview"], "hello bob");
    assert_eq!(n["quiet"], false);
    assert_eq!(n["devices"][0]["token"], "bob-phone-token");
    assert_eq!(n["devices"][0]["platform"], "fcm");
    assert_eq!(n["devices"][0]["device"], "phone");
    assert!(n["conv_seq"].as_u64().unwrap() >= 2);
    assert!(node.metric("tern_push_retries_total").unwrap() >= 1);

    // Busy: notifications are quiet.
    let bob = client(&node, "bob", "laptop");
    bob.set_presence(PresenceStatus::BUSY, "focus", WAIT)
        .unwrap();
    bob.stop();
    send(&alice, "bob", "while busy");
    let n = next_notifications(&rx, WAIT).unwrap();
    assert_eq!(
        (n[0]["preview"].clone(), n[0]["quiet"].clone()),
        ("while busy".into(), true.into())
    );

    // Muted conversation: nothing for it; another conversation still notifies (and comes
    // after, so the muted one was skipped, not late).
    let bob = client(&node, "bob", "laptop");
    bob.mute("alice", u64::MAX, WAIT).unwrap();
    bob.set_presence(PresenceStatus::ONLINE, "", WAIT).unwrap();
    bob.stop();
    send(&alice, "bob", "muted one");
    let carol = client(&node, "carol", "phone");
    send(&carol, "bob", "from carol");
    let n = next_notifications(&rx, WAIT).unwrap();
    let previews: Vec<&str> = n.iter().map(|x| x["preview"].as_str().unwrap()).collect();
    assert_eq!(previews, ["from carol"]);
    assert_eq!(n[0]["quiet"], false);
    // A user without a token gets none.
    send(&alice, "erin", "no token");
    assert!(next_notifications(&rx, Duration::from_millis(1_500)).is_none());
    assert!(node.metric("tern_push_skipped_total").unwrap() >= 2);
}

#[test]
fn cli_registers_a_token_and_mutes() {
    let (url, rx) = receiver(Vec::new(), 16);
    let node = Node::start_with(&["--push-webhook", &url, "--push-secret", SECRET]);
    let token = node.token("bob", Some("tablet"), 3600);
    let run = |args: &[&str]| {
        let out = Command::new(tern_bin())
            .args(["--server", &node.native, "--token", &token])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(run(&["push-token", "apns", "cli-token"]).contains("registered"));
    assert!(run(&["mute", "alice"]).contains("muted alice"));
    let alice = client(&node, "alice", "phone");
    send(&alice, "bob", "muted");
    assert!(next_notifications(&rx, Duration::from_millis(1_500)).is_none());
    assert!(run(&["mute", "alice", "--off"]).contains("unmuted"));
    send(&alice, "bob", "not muted");
    let n = next_notifications(&rx, WAIT).unwrap();
    assert_eq!(n[0]["devices"][0]["token"], "cli-token");
    assert_eq!(n[0]["devices"][0]["platform"], "apns");
    assert_eq!(n[0]["preview"], "not muted");
}

#[test]
fn group_messages_notify_offline_members_and_large_groups_only_the_mentioned() {
    let (url, rx) = receiver(vec![], 64);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tern.toml");
    // Up to 3 members: write diffusion; more: read diffusion.
    std::fs::write(&cfg, "[limits]\ngroup_write_diffusion_max = 3\n").unwrap();
    let node = Node::start_with(&[
        "--config",
        cfg.to_str().unwrap(),
        "--push-webhook",
        &url,
        "--push-secret",
        SECRET,
    ]);
    let alice = client(&node, "alice", "phone");
    let mut online = Vec::new();
    for user in ["bob", "carol", "dave"] {
        let c = client(&node, user, "phone");
        c.register_push_token("fcm", &format!("{user}-token"), WAIT)
            .unwrap();
        if user == "carol" {
            online.push(c);
        } else {
            c.stop();
        }
    }
    // carol stays online: she gets the PUSH, not a notification.
    let g = alice
        .group_create("trip", &["bob", "carol"], WAIT)
        .unwrap()
        .group
        .to_string();
    alice
        .send_group_wait(&g, MessageKind::TEXT, b"small group".to_vec(), WAIT)
        .unwrap();
    let n = next_notifications(&rx, WAIT).expect("a notification for bob");
    assert_eq!(n.len(), 1, "{n:?}");
    assert_eq!(n[0]["user"], "bob");
    assert_eq!(n[0]["conv"]["kind"], "group");
    assert_eq!(n[0]["conv"]["id"], g.as_str());
    assert_eq!(n[0]["sender"], "alice");
    assert_eq!(n[0]["preview"], "small group");
    assert_eq!(n[0]["devices"][0]["token"], "bob-token");

    // Four members: read diffusion. A message without mentions notifies nobody; a mention
    // notifies the one named; @all every offline member (never the sender).
    alice.group_add(&g, &["dave"], WAIT).unwrap();
    // The membership event itself is not a message: nothing for it.
    alice
        .send_group_wait(&g, MessageKind::TEXT, b"no mention".to_vec(), WAIT)
        .unwrap();
    alice
        .send_group_mentioning_wait(
            &g,
            MessageKind::TEXT,
            b"hey dave".to_vec(),
            &["dave"],
            false,
            WAIT,
        )
        .unwrap();
    let n = next_notifications(&rx, WAIT).expect("a notification for dave");
    let got: Vec<(&str, &str)> = n
        .iter()
        .map(|x| (x["user"].as_str().unwrap(), x["preview"].as_str().unwrap()))
        .collect();
    assert_eq!(got, [("dave", "hey dave")]);
    alice
        .send_group_mentioning_wait(&g, MessageKind::TEXT, b"everyone".to_vec(), &[], true, WAIT)
        .unwrap();
    let mut users = Vec::new();
    let end = Instant::now() + WAIT;
    while users.len() < 2 && Instant::now() < end {
        if let Some(n) = next_notifications(&rx, Duration::from_millis(500)) {
            for x in n {
                assert_eq!(x["preview"], "everyone");
                users.push(x["user"].as_str().unwrap().to_owned());
            }
        }
    }
    users.sort();
    assert_eq!(users, ["bob", "dave"], "@all: the offline members");
    assert!(next_notifications(&rx, Duration::from_millis(1_000)).is_none());
}
