//! terndump and ternbench against real nodes: a capture of a real session decodes to exactly the
//! frames the client sent, the proxy forwards byte for byte while printing, and every ternbench
//! scenario runs at a small size and reports a clean result, over every transport.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::borrow::Cow;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tern_protocol::*;
use tern_tests::{recv_until, ternbench_bin, terndump_bin, Node, WAIT};

fn json_lines(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The frames a raw client sends in the capture test, and what it reads back.
fn client_frames(token: &str) -> Vec<Frame<'static>> {
    vec![
        Frame::new(
            1,
            Body::Hello(Hello {
                protocol: PROTOCOL,
                capabilities: Capabilities::ALL,
                max_frame: DEFAULT_MAX_BODY,
                token: Cow::Owned(token.to_owned()),
                device: "phone".into(),
                resume_inbox_seq: 0,
                client: "capture-test".into(),
            }),
        ),
        Frame::new(
            2,
            Body::Send(Send {
                to: Conv::direct("bob"),
                msg_id: MsgId([9; 16]),
                kind: MessageKind::TEXT,
                body: Cow::Borrowed(b"captured hello"),
            }),
        ),
        Frame::new(3, Body::Ping(Ping { time: 77 })),
    ]
}

/// Runs the session over a plain socket; returns the bytes received.
fn raw_session(addr: &str, frames: &[Frame<'_>]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut got = Vec::new();
    for f in frames {
        s.write_all(&f.to_bytes().unwrap()).unwrap();
        // Wait for the answer to this request before the next, so the order is fixed.
        let deadline = Instant::now() + WAIT;
        loop {
            let mut buf = [0u8; 4096];
            if let Ok(n) = s.read(&mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
            let answered = FrameIter::new(&got, ABS_MAX_BODY)
                .filter_map(Result::ok)
                .any(|r| r.request_id == f.request_id);
            if answered || Instant::now() > deadline {
                break;
            }
        }
    }
    got
}

/// Writes a pcap of one TCP connection from both directions' bytes, as tcpdump on `lo` would.
fn synthetic_pcap(path: &std::path::Path, c2s: &[u8], s2c: &[u8], server_port: u16) {
    use etherparse::PacketBuilder;
    use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
    let file = std::fs::File::create(path).unwrap();
    let mut w = PcapWriter::with_header(
        file,
        PcapHeader {
            datalink: pcap_file::DataLink::ETHERNET,
            ..Default::default()
        },
    )
    .unwrap();
    let (cport, mut cseq, mut sseq) = (40_000u16, 1_000u32, 9_000u32);
    let mut t = Duration::from_secs(1_767_225_600);
    let mut emit = |from_client: bool, seq: u32, syn: bool, payload: &[u8]| {
        let (sp, dp) = if from_client {
            (cport, server_port)
        } else {
            (server_port, cport)
        };
        let b = PacketBuilder::ethernet2([0; 6], [0; 6]).ipv4([127, 0, 0, 1], [127, 0, 0, 1], 64);
        let b = if syn {
            b.tcp(sp, dp, seq, 65535).syn()
        } else {
            b.tcp(sp, dp, seq, 65535).ack(0)
        };
        let mut pkt = Vec::new();
        b.write(&mut pkt, payload).unwrap();
        t += Duration::from_millis(1);
        w.write_packet(&PcapPacket::new(t, pkt.len() as u32, &pkt))
            .unwrap();
    };
    emit(true, cseq, true, &[]);
    emit(false, sseq, true, &[]);
    cseq += 1;
    sseq += 1;
    // Segments of 100 bytes, the server's second segment sent before its first (out of order).
    for (i, chunk) in c2s.chunks(100).enumerate() {
        emit(true, cseq + (i * 100) as u32, false, chunk);
    }
    let chunks: Vec<&[u8]> = s2c.chunks(100).collect();
    let mut order: Vec<usize> = (0..chunks.len()).collect();
    if order.len() > 1 {
        order.swap(0, 1);
    }
    for i in order {
        emit(false, sseq + (i * 100) as u32, false, chunks[i]);
    }
    // A retransmission of the first client segment: must not show up twice.
    emit(true, cseq, false, &c2s[..c2s.len().min(100)]);
}

#[test]
fn terndump_decodes_a_capture_of_a_real_session() {
    let node = Node::start();
    let token = node.token("alice", Some("phone"), 600);
    let port: u16 = node.native.rsplit(':').next().unwrap().parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("session.pcap");
    let frames = client_frames(&token);

    // A real capture with tcpdump when the machine has it and may capture on lo.
    let mut tcpdump = Command::new("tcpdump")
        // -Z root: tcpdump would otherwise switch to its own user, which cannot write into the
        // test's private temporary dir. No capture filter: on some kernels a BPF port filter
        // on `lo` drops these packets; terndump's own `port=` filter selects the session.
        // --immediate-mode: without it libpcap hands packets over a block at a time, and a
        // short session ends before its block does.
        .args(["-i", "lo", "-U", "--immediate-mode", "-Z", "root", "-w"])
        .arg(&pcap)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .ok();
    let mut listening = false;
    if let Some(td) = tcpdump.as_mut() {
        let mut err = BufReader::new(td.stderr.take().unwrap());
        let mut line = String::new();
        if err.read_line(&mut line).is_ok() && line.contains("listening") {
            listening = true;
            // The socket filter is attached just after the message; give it a moment.
            std::thread::sleep(Duration::from_millis(500));
            std::thread::spawn(move || for _ in err.lines() {});
        }
    }
    let s2c = raw_session(&node.native, &frames);
    let used_tcpdump = listening;
    if let Some(mut td) = tcpdump {
        std::thread::sleep(Duration::from_millis(300));
        // SIGTERM lets tcpdump finish the file.
        let _ = Command::new("kill").arg(td.id().to_string()).status();
        let _ = td.wait();
    }
    if used_tcpdump {
        check_capture(&pcap, port);
    } else {
        eprintln!("tcpdump unavailable or not allowed to capture on lo: checking the written capture only");
    }
    // The same session written as a capture by the test itself, with a segment out of order and
    // a retransmission, exercises the reassembly whether or not tcpdump exists here.
    let mut c2s = Vec::new();
    for f in &frames {
        f.encode(&mut c2s).unwrap();
    }
    let written = dir.path().join("written.pcap");
    synthetic_pcap(&written, &c2s, &s2c, port);
    check_capture(&written, port);
}

fn check_capture(pcap: &std::path::Path, port: u16) {
    let out = Command::new(terndump_bin())
        .args(["--json", "--filter", &format!("port={port}"), "pcap"])
        .arg(pcap)
        .output()
        .unwrap();
    let lines = json_lines(&out.stdout);
    let sent: Vec<(String, u64)> = lines
        .iter()
        .filter(|v| v["dir"] == "c>s" && v.get("type").is_some())
        .map(|v| {
            (
                v["type"].as_str().unwrap().to_owned(),
                v["request_id"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        sent,
        vec![("HELLO".into(), 1), ("SEND".into(), 2), ("PING".into(), 3)],
        "terndump output: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let send = lines.iter().find(|v| v["type"] == "SEND").unwrap();
    assert_eq!(send["body"]["body"], "captured hello");
    assert_eq!(send["body"]["to"]["id"], "bob");
    let answers: Vec<&str> = lines
        .iter()
        .filter(|v| v["dir"] == "s>c")
        .filter_map(|v| v["type"].as_str())
        .collect();
    assert_eq!(answers, vec!["WELCOME", "SEND_ACK", "PONG"]);

    // The human form names the same frames, and --filter narrows it.
    let out = Command::new(terndump_bin())
        .args([
            "--filter",
            "type=SEND",
            "--filter",
            &format!("port={port}"),
            "pcap",
        ])
        .arg(pcap)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(" SEND #2 ") && text.contains("captured hello"),
        "{text}"
    );
    assert!(!text.contains(" HELLO #1"), "{text}");
    assert!(text.contains("-- summary"), "{text}");
}

#[test]
fn terndump_proxy_forwards_unchanged_and_prints_both_directions() {
    let node = Node::start();
    let mut bob = node.connect("bob", "laptop");
    let mut proxy = Command::new(terndump_bin())
        .args([
            "--json",
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &node.native,
            "--max-conns",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(proxy.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    let addr = line.split_whitespace().nth(2).unwrap().to_owned();

    let token = node.token("alice", Some("phone"), 600);
    let mut alice =
        tern_tools::Connection::connect(&addr, &tern_tools::HelloParams::new(token, "phone"), WAIT)
            .unwrap();
    let body: Vec<u8> = (0..=255u8).collect();
    let ack = alice
        .request(
            Body::Send(Send {
                to: Conv::direct("bob"),
                msg_id: MsgId([3; 16]),
                kind: MessageKind::CUSTOM,
                body: Cow::Owned(body.clone()),
            }),
            WAIT,
        )
        .unwrap();
    assert!(matches!(ack.body, Body::SendAck(_)), "{ack:?}");
    let (push, _) = recv_until(&mut bob, |f| matches!(f.body, Body::Push(_)));
    let Body::Push(m) = push.body else {
        unreachable!()
    };
    assert_eq!(
        m.body.as_ref(),
        &body[..],
        "bytes through the proxy must arrive unchanged"
    );
    alice.shutdown();
    drop(alice);

    let deadline = Instant::now() + WAIT;
    while proxy.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "proxy did not finish after its one connection"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut out = Vec::new();
    proxy.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    let lines = json_lines(&out);
    let seen = |dir: &str, ty: &str| lines.iter().any(|v| v["dir"] == dir && v["type"] == ty);
    assert!(
        seen("c>s", "HELLO") && seen("c>s", "SEND"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert!(
        seen("s>c", "WELCOME") && seen("s>c", "SEND_ACK"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    let send = lines.iter().find(|v| v["type"] == "SEND").unwrap();
    assert_eq!(send["body"]["body"]["hex"], hex::encode(&body));
}

fn bench(node: &Node, args: &[&str]) -> (bool, Value, String) {
    bench_over(node, "native", &node.native, args)
}

/// Runs ternbench over `transport` against `target` (TLS trusts the node's dev certificate,
/// found through `--data-dir`).
fn bench_over(node: &Node, transport: &str, target: &str, args: &[&str]) -> (bool, Value, String) {
    let out = Command::new(ternbench_bin())
        .args([
            "--json",
            "--transport",
            transport,
            "--target",
            target,
            "--workers",
            "2",
            "--sources",
            "4",
            "--timeout",
            "60",
            "--data-dir",
        ])
        .arg(node.data_dir())
        .args(["--node-pid", &node.pid().to_string()])
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let v = json_lines(&out.stdout).pop().unwrap_or(Value::Null);
    (out.status.success(), v, stderr)
}

#[test]
fn ternbench_runs_every_scenario_small() {
    let node = Node::start();

    let (ok, v, err) = bench(&node, &["idle", "--conns", "200", "--hold", "1"]);
    assert!(ok, "idle: {v} {err}");
    assert_eq!(v["connected"], 200);
    assert!(v["node_bytes_per_conn_connected"].as_f64().is_some(), "{v}");
    assert!(v["node_bytes_per_conn_idle"].as_f64().is_some(), "{v}");

    let (ok, v, err) = bench(
        &node,
        &[
            "p2p",
            "--pairs",
            "10",
            "--messages",
            "2000",
            "--window",
            "8",
        ],
    );
    assert!(ok, "p2p: {v} {err}");
    assert_eq!(v["delivered"], 2000);
    assert!(v["send_to_push"]["p99_us"].as_u64().is_some(), "{v}");
    assert_eq!(v["ok"], true);

    let (ok, v, err) = bench(
        &node,
        &["p2p", "--pairs", "4", "--messages", "400", "--rate", "2000"],
    );
    assert!(ok, "p2p at a fixed rate: {v} {err}");
    assert_eq!(v["delivered"], 400);

    let (ok, v, err) = bench(&node, &["storm", "--clients", "40", "--messages", "5"]);
    assert!(ok, "storm: {v} {err}");
    assert_eq!(v["synced_clients"], 40);
    assert_eq!(v["messages_resynced"], 200);

    // One room: within the node's default room rate (burst 40) every member gets everything.
    let (ok, v, err) = bench(
        &node,
        &[
            "fanout",
            "--members",
            "10",
            "--messages",
            "30",
            "--window",
            "8",
        ],
    );
    assert!(ok, "fanout: {v} {err}");
    assert_eq!(v["delivered"], 30 * 9);
    assert!(v["send_to_last_push"]["p99_us"].as_u64().is_some(), "{v}");
    // A group past the write-diffusion size (read diffusion): every member gets every message.
    let (ok, v, err) = bench(
        &node,
        &[
            "fanout",
            "--group",
            "--members",
            "250",
            "--messages",
            "20",
            "--window",
            "8",
        ],
    );
    assert!(ok, "group fanout: {v} {err}");
    assert_eq!(v["delivered"], 20 * 249, "{v}");
    // Past the rate the publisher is refused: the run ends and says so rather than hanging.
    let (ok, v, err) = bench(&node, &["fanout", "--members", "4", "--messages", "100"]);
    assert!(!ok, "a refused publisher must fail the run: {v} {err}");
    assert!(v.to_string().contains("RATE_LIMITED"), "{v} {err}");
}

/// A small p2p run and a small storm over one transport; every message must arrive.
fn p2p_and_storm_over(node: &Node, transport: &str, target: &str) -> Value {
    let (ok, v, err) = bench_over(
        node,
        transport,
        target,
        &["p2p", "--pairs", "5", "--messages", "300", "--window", "8"],
    );
    assert!(ok, "{transport} p2p: {v} {err}");
    assert_eq!(v["parameters"]["transport"], transport, "{v}");
    assert_eq!(v["acked"], 300, "{transport}: {v}");
    assert_eq!(v["delivered"], 300, "{transport}: {v}");
    assert!(v["send_to_push"]["p99_us"].as_u64().is_some(), "{v}");
    assert_eq!(v["ok"], true, "{v}");
    let (ok, s, err) = bench_over(
        node,
        transport,
        target,
        &["storm", "--clients", "10", "--messages", "3"],
    );
    assert!(ok, "{transport} storm: {s} {err}");
    assert_eq!(s["synced_clients"], 10, "{transport}: {s}");
    assert_eq!(s["messages_resynced"], 30, "{transport}: {s}");
    v
}

#[test]
fn ternbench_over_tls() {
    let node = Node::start();
    let (ok, v, err) = bench_over(
        &node,
        "tls",
        &node.tls,
        &["idle", "--conns", "20", "--hold", "0"],
    );
    assert!(ok, "tls idle: {v} {err}");
    assert_eq!(v["connected"], 20, "{v}");
    let v = p2p_and_storm_over(&node, "tls", &node.tls);
    // The pairs log in one after another: all but each worker's first resume a session.
    let resumed = v["tls_handshakes"]["resumed"].as_u64().unwrap_or(0);
    assert!(resumed > 0, "no TLS session was resumed: {v}");
    // Without a certificate to trust, nothing connects.
    let out = Command::new(ternbench_bin())
        .args(["--transport", "tls", "--target", &node.tls, "--secret", "x"])
        .args(["--ca", "/nonexistent/cert.pem", "idle", "--conns", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn ternbench_over_websocket() {
    let node = Node::start();
    let (ok, v, err) = bench_over(
        &node,
        "ws",
        &node.http,
        &["idle", "--conns", "20", "--hold", "0"],
    );
    assert!(ok, "ws idle: {v} {err}");
    assert_eq!(v["connected"], 20, "{v}");
    p2p_and_storm_over(&node, "ws", &node.http);
    p2p_and_storm_over(&node, "wss", &node.tls);
}

#[test]
fn ternbench_over_the_http_tunnel() {
    let node = Node::start();
    let (ok, v, err) = bench_over(
        &node,
        "tunnel",
        &node.http,
        &["idle", "--conns", "20", "--hold", "0"],
    );
    assert!(ok, "tunnel idle: {v} {err}");
    assert_eq!(v["connected"], 20, "{v}");
    p2p_and_storm_over(&node, "tunnel", &node.http);
    p2p_and_storm_over(&node, "tunnel-tls", &node.tls);
}

#[test]
fn ternbench_refuses_non_loopback_targets() {
    let out = Command::new(ternbench_bin())
        .args([
            "--target",
            "10.1.2.3:14000",
            "--secret",
            "x",
            "idle",
            "--conns",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
}
