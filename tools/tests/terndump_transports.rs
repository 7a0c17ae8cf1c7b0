//! terndump finds the tern frames inside every transport of SPEC.md §12: WebSocket binary
//! messages, HTTP tunnel bodies (Content-Length and chunked, several requests per connection),
//! native frames after a PROXY v1 or v2 header; and reports TLS as undecodable without errors.
//! The captures are synthetic pcaps built here, cut into TCP segments at awkward places.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::borrow::Cow;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use etherparse::PacketBuilder;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use serde_json::Value;
use tern_protocol::{
    Body, Capabilities, Conv, Frame, Hello, Message, MessageFlags, MessageKind, MsgId, Ping,
    PushAck, Send, SendAck, Welcome,
};

const SID: &str = "00000001000000a7f3c2d19e8b7a6c5d4e3f2a1b0c9d8e7f";

fn frame(rid: u32, body: Body<'static>) -> Vec<u8> {
    let mut b = Vec::new();
    Frame::new(rid, body).encode(&mut b).unwrap();
    b
}

fn hello() -> Vec<u8> {
    frame(
        1,
        Body::Hello(Hello {
            protocol: 1,
            capabilities: Capabilities(0),
            max_frame: 65_536,
            token: Cow::Borrowed("tok.en.sig"),
            device: Cow::Borrowed("phone"),
            resume_inbox_seq: 0,
            client: Cow::Borrowed("test/1"),
        }),
    )
}

fn welcome() -> Vec<u8> {
    frame(
        1,
        Body::Welcome(Welcome {
            protocol: 1,
            capabilities: Capabilities(0),
            max_frame: 65_536,
            heartbeat_secs: 30,
            idle_timeout_secs: 90,
            user: Cow::Borrowed("alice"),
            session_id: 7,
            server_time: 1_767_225_600_000,
            inbox_head: 0,
            node: Cow::Borrowed("n1"),
        }),
    )
}

fn send(rid: u32, to: &'static str, text: &'static str) -> Vec<u8> {
    frame(
        rid,
        Body::Send(Send {
            to: Conv::direct(to),
            msg_id: MsgId([rid as u8; 16]),
            kind: MessageKind::TEXT,
            body: Cow::Borrowed(text.as_bytes()),
        }),
    )
}

fn send_ack(rid: u32) -> Vec<u8> {
    frame(
        rid,
        Body::SendAck(SendAck {
            msg_id: MsgId([rid as u8; 16]),
            conv_seq: 5,
            inbox_seq: 9,
            time: 1_767_225_600_001,
        }),
    )
}

fn push(from: &'static str, text: &'static str, inbox_seq: u64) -> Vec<u8> {
    frame(
        0,
        Body::Push(Message {
            conv: Conv::direct(from),
            sender: Cow::Borrowed(from),
            sender_device: Cow::Borrowed("laptop"),
            conv_seq: 3,
            inbox_seq,
            msg_id: MsgId([0xab; 16]),
            time: 1_767_225_600_002,
            kind: MessageKind::TEXT,
            flags: MessageFlags::NONE,
            body: Cow::Borrowed(text.as_bytes()),
        }),
    )
}

fn ping(rid: u32) -> Vec<u8> {
    frame(rid, Body::Ping(Ping { time: 11 }))
}

fn pong(rid: u32) -> Vec<u8> {
    frame(rid, Body::Pong(Ping { time: 11 }))
}

/// A WebSocket frame: clients mask (with a key that changes every byte), servers do not.
fn ws(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut b = vec![if fin { 0x80 } else { 0 } | opcode];
    let m = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => b.push(m | n as u8),
        n if n < 65_536 => {
            b.push(m | 126);
            b.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            b.push(m | 127);
            b.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        b.extend_from_slice(&key);
        b.extend(payload.iter().enumerate().map(|(i, x)| x ^ key[i % 4]));
    } else {
        b.extend_from_slice(payload);
    }
    b
}

fn chunk(data: &[u8]) -> Vec<u8> {
    let mut b = format!("{:x}\r\n", data.len()).into_bytes();
    b.extend_from_slice(data);
    b.extend_from_slice(b"\r\n");
    b
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Packets of many TCP connections, in capture order.
struct Capture {
    packets: Vec<Vec<u8>>,
}

struct Tcp {
    client: u16,
    server: u16,
    /// Next sequence numbers, client's and server's.
    seq: [u32; 2],
}

impl Capture {
    fn new() -> Self {
        Capture {
            packets: Vec::new(),
        }
    }

    fn packet(&mut self, t: &Tcp, from_client: bool, seq: u32, syn: bool, payload: &[u8]) {
        let (sp, dp, src, dst) = if from_client {
            (t.client, t.server, [10, 0, 0, 2], [10, 0, 0, 1])
        } else {
            (t.server, t.client, [10, 0, 0, 1], [10, 0, 0, 2])
        };
        let b = PacketBuilder::ethernet2([0; 6], [0; 6]).ipv4(src, dst, 64);
        let b = if syn {
            b.tcp(sp, dp, seq, 65535).syn()
        } else {
            b.tcp(sp, dp, seq, 65535).ack(0)
        };
        let mut pkt = Vec::new();
        b.write(&mut pkt, payload).unwrap();
        self.packets.push(pkt);
    }

    fn open(&mut self, client: u16, server: u16) -> Tcp {
        let t = Tcp {
            client,
            server,
            seq: [1_000 * u32::from(client % 50), 7_000_000],
        };
        self.packet(&t, true, t.seq[0], true, &[]);
        self.packet(&t, false, t.seq[1], true, &[]);
        Tcp {
            seq: [t.seq[0] + 1, t.seq[1] + 1],
            ..t
        }
    }

    /// Sends `data` in one direction, cut into segments at `cuts` (offsets into `data`).
    fn send(&mut self, t: &mut Tcp, from_client: bool, data: &[u8], cuts: &[usize]) {
        let i = usize::from(!from_client);
        let mut start = 0;
        for &end in cuts.iter().chain(std::iter::once(&data.len())) {
            if end > start {
                self.packet(t, from_client, t.seq[i], false, &data[start..end]);
                t.seq[i] += (end - start) as u32;
                start = end;
            }
        }
    }

    fn write(&self, path: &Path) {
        let file = std::fs::File::create(path).unwrap();
        let mut w = PcapWriter::with_header(
            file,
            PcapHeader {
                datalink: pcap_file::DataLink::ETHERNET,
                ..Default::default()
            },
        )
        .unwrap();
        let mut time = Duration::from_secs(1_767_225_600);
        for p in &self.packets {
            time += Duration::from_millis(1);
            w.write_packet(&PcapPacket::new(time, p.len() as u32, p))
                .unwrap();
        }
    }
}

fn terndump(args: &[&str], file: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_terndump"))
        .args(args)
        .arg(file)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// (dir, transport, type, request_id) of every frame of one connection, in order.
fn frames(lines: &[Value], conn: u64) -> Vec<(String, String, String, u64)> {
    lines
        .iter()
        .filter(|v| v["conn"] == conn && v.get("type").is_some())
        .map(|v| {
            (
                v["dir"].as_str().unwrap().to_owned(),
                v["transport"].as_str().unwrap().to_owned(),
                v["type"].as_str().unwrap().to_owned(),
                v["request_id"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn f(dir: &str, transport: &str, ty: &str, rid: u64) -> (String, String, String, u64) {
    (dir.into(), transport.into(), ty.into(), rid)
}

fn notes<'a>(lines: &'a [Value], conn: u64, kind: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|v| v["conn"] == conn && v["note"] == kind)
        .collect()
}

fn find<'a>(lines: &'a [Value], conn: u64, ty: &str) -> &'a Value {
    lines
        .iter()
        .find(|v| v["conn"] == conn && v["type"] == ty)
        .unwrap_or_else(|| panic!("no {ty} on conn {conn}"))
}

/// Connection 1: a WebSocket session.
fn websocket(cap: &mut Capture) -> (Vec<u8>, Vec<u8>) {
    let mut t = cap.open(50_001, 8080);
    let upgrade = b"GET /tern/ws HTTP/1.1\r\nHost: node:8080\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: tern.v1\r\n\r\n";
    let switched = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
        Sec-WebSocket-Protocol: tern.v1\r\n\r\n";
    let h = hello();
    let (s2, p3, pa) = (
        send(2, "bob", "hello over ws"),
        ping(3),
        frame(4, Body::PushAck(PushAck { inbox_seq: 9 })),
    );
    // HELLO split across two messages; SEND and PING in one message; PUSH_ACK in a message
    // fragmented around a WebSocket ping; then a close.
    let c_msgs = cat(&[
        &ws(true, 2, &h[..10], true),
        &ws(true, 2, &h[10..], true),
        &ws(true, 2, &cat(&[&s2, &p3]), true),
        &ws(false, 2, &pa[..5], true),
        &ws(true, 9, b"hb", true),
        &ws(true, 0, &pa[5..], true),
    ]);
    let c_close = ws(true, 8, &[0x03, 0xe8], true);
    let s_msgs = cat(&[
        &ws(true, 2, &welcome(), false),
        &ws(
            true,
            2,
            &cat(&[&send_ack(2), &push("bob", "hi over ws", 9)]),
            false,
        ),
        &ws(true, 2, &pong(3), false),
        &ws(true, 10, b"hb", false),
    ]);
    let s_close = ws(true, 8, b"\x03\xe8bye", false);

    cap.send(&mut t, true, upgrade, &[30]);
    // The client's first message (and a bit of the second) goes before the 101 is seen: it
    // must wait for the answer.
    cap.send(&mut t, true, &c_msgs[..20], &[]);
    cap.send(&mut t, false, switched, &[]);
    // Cuts inside WebSocket headers, masks and payloads.
    cap.send(&mut t, true, &c_msgs[20..], &[1, 7, 20, 33, 40, 60]);
    cap.send(&mut t, false, &s_msgs, &[1, 3, 50, 51]);
    cap.send(&mut t, true, &c_close, &[]);
    cap.send(&mut t, false, &s_close, &[]);
    (
        cat(&[upgrade, &c_msgs, &c_close]),
        cat(&[switched, &s_msgs, &s_close]),
    )
}

/// Connections 2-4: a tunnel session over three TCP connections.
fn tunnel(cap: &mut Capture) -> Vec<u8> {
    // Open: HELLO by Content-Length; WELCOME and a PUSH in a chunked stream, cut mid-chunk.
    let mut t = cap.open(50_002, 8080);
    let h = hello();
    let open = cat(&[
        format!(
            "POST /tern/open HTTP/1.1\r\nHost: node:8080\r\nContent-Type: application/x-tern\r\n\
             Content-Length: {}\r\n\r\n",
            h.len()
        )
        .as_bytes(),
        &h,
    ]);
    let w = welcome();
    let p1 = push("bob", "first push", 8);
    let opened = cat(&[
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-tern\r\nX-Tern-Session: {SID}\r\n\
             Cache-Control: no-store\r\nX-Accel-Buffering: no\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .as_bytes(),
        &chunk(&w[..20]),
        &chunk(&cat(&[&w[20..], &p1])),
        b"0\r\n\r\n",
    ]);
    cap.send(&mut t, true, &open, &[5, 60]);
    let head_len = opened.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    cap.send(
        &mut t,
        false,
        &opened,
        &[head_len + 1, head_len + 10, head_len + 30, head_len + 70],
    );

    // Upstream: two keep-alive POSTs on another connection.
    let mut t = cap.open(50_003, 8080);
    let up = |n: u32, body: &[u8]| {
        cat(&[
            format!(
                "POST /tern/up?s={SID}&n={n} HTTP/1.1\r\nHost: node:8080\r\n\
                 Content-Type: application/x-tern\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
            body,
        ])
    };
    let no_content = b"HTTP/1.1 204 No Content\r\n\r\n";
    let up0 = up(0, &send(2, "bob", "hello over the tunnel"));
    let up1 = up(1, &ping(3));
    cap.send(&mut t, true, &up0, &[up0.len() - 30]);
    cap.send(&mut t, false, no_content, &[]);
    cap.send(&mut t, true, &up1, &[]);
    cap.send(&mut t, false, no_content, &[]);

    // Long-poll: frames by Content-Length, then an empty answer.
    let mut t = cap.open(50_004, 8080);
    let poll = format!("GET /tern/poll?s={SID}&wait=25 HTTP/1.1\r\nHost: node:8080\r\n\r\n");
    let frames = cat(&[&send_ack(2), &pong(3), &push("bob", "polled push", 9)]);
    let polled = cat(&[
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-tern\r\nCache-Control: no-store\r\n\
             Content-Length: {}\r\n\r\n",
            frames.len()
        )
        .as_bytes(),
        &frames,
    ]);
    let empty = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-tern\r\nContent-Length: 0\r\n\r\n";
    cap.send(&mut t, true, poll.as_bytes(), &[]);
    cap.send(&mut t, false, &polled, &[40, 120]);
    cap.send(&mut t, true, poll.as_bytes(), &[]);
    cap.send(&mut t, false, empty, &[]);
    opened
}

/// Connections 5-6: native frames after PROXY v1 and v2 headers.
fn proxied(cap: &mut Capture) {
    let mut t = cap.open(50_005, 14000);
    let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 14000\r\n";
    cap.send(
        &mut t,
        true,
        &cat(&[v1, &hello(), &send(2, "carol", "via haproxy v1")]),
        &[3, 20, 50],
    );
    cap.send(&mut t, false, &cat(&[&welcome(), &send_ack(2)]), &[]);

    let mut t = cap.open(50_006, 14000);
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend_from_slice(&[0x21, 0x21, 0, 36 + 5]);
    let client: std::net::Ipv6Addr = "2001:db8::17".parse().unwrap();
    let server: std::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
    v2.extend_from_slice(&client.octets());
    v2.extend_from_slice(&server.octets());
    v2.extend_from_slice(&40_001u16.to_be_bytes());
    v2.extend_from_slice(&14_000u16.to_be_bytes());
    // A TLV (PP2_TYPE_NOOP), which must be skipped with the header.
    v2.extend_from_slice(&[0x04, 0, 2, 0, 0]);
    cap.send(&mut t, true, &cat(&[&v2, &hello()]), &[5, 14]);
    cap.send(&mut t, false, &welcome(), &[]);
}

/// Connection 7: TLS, with bytes that look like a frame start inside.
fn tls(cap: &mut Capture) {
    let mut t = cap.open(50_007, 14443);
    let mut hello = vec![
        0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0x00, 0x00, 0x3c, 0x03, 0x03,
    ];
    hello.extend((0..0x3bu8).map(|i| i.wrapping_mul(37)));
    hello.extend_from_slice(&[0xe7, 0x4e, 0x01, 0x05, 0, 0, 0, 0]);
    let mut answer = vec![0x16, 0x03, 0x03, 0x00, 0x30];
    answer.extend((0..0x30u8).map(|i| i ^ 0x5a));
    answer.extend_from_slice(&[0x17, 0x03, 0x03, 0x00, 0x10, 0xe7, 0x4e, 0x01]);
    answer.extend_from_slice(&[0x33; 13]);
    cap.send(&mut t, true, &hello, &[1]);
    cap.send(&mut t, false, &answer, &[]);
    cap.send(
        &mut t,
        true,
        &[0x17, 0x03, 0x03, 0x00, 0x02, 0xe7, 0x4e],
        &[],
    );
}

fn capture(dir: &Path) -> (std::path::PathBuf, Vec<u8>, Vec<u8>, Vec<u8>) {
    let mut cap = Capture::new();
    let (ws_c, ws_s) = websocket(&mut cap);
    let opened = tunnel(&mut cap);
    proxied(&mut cap);
    tls(&mut cap);
    let path = dir.join("transports.pcap");
    cap.write(&path);
    (path, ws_c, ws_s, opened)
}

#[test]
fn frames_inside_every_transport_decode_like_native_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (pcap, ..) = capture(dir.path());
    let (status, out) = terndump(&["--json", "pcap"], &pcap);
    assert_eq!(status, Some(0), "nothing may fail to decode:\n{out}");
    let lines = json_lines(&out);

    // WebSocket: messages concatenated per direction, client frames unmasked.
    assert_eq!(
        frames(&lines, 1),
        vec![
            f("c>s", "ws", "HELLO", 1),
            f("c>s", "ws", "SEND", 2),
            f("c>s", "ws", "PING", 3),
            f("c>s", "ws", "PUSH_ACK", 4),
            f("s>c", "ws", "WELCOME", 1),
            f("s>c", "ws", "SEND_ACK", 2),
            f("s>c", "ws", "PUSH", 0),
            f("s>c", "ws", "PONG", 3),
        ],
        "{out}"
    );
    let hello = find(&lines, 1, "HELLO");
    assert_eq!(hello["body"]["token"], "tok.en.sig");
    assert_eq!(hello["offset"], 0);
    let send = find(&lines, 1, "SEND");
    assert_eq!(send["body"]["to"]["id"], "bob");
    assert_eq!(send["body"]["body"], "hello over ws");
    assert_eq!(
        send["offset"], hello["len"],
        "offsets count tern stream bytes"
    );
    assert_eq!(find(&lines, 1, "PUSH_ACK")["body"]["inbox_seq"], 9);
    assert_eq!(find(&lines, 1, "PUSH")["body"]["body"], "hi over ws");
    let ws_notes: Vec<(&str, &str)> = notes(&lines, 1, "ws")
        .iter()
        .map(|v| (v["dir"].as_str().unwrap(), v["opcode"].as_str().unwrap()))
        .collect();
    assert_eq!(
        ws_notes,
        vec![
            ("c>s", "ping"),
            ("s>c", "pong"),
            ("c>s", "close"),
            ("s>c", "close")
        ],
        "{out}"
    );
    let closes = notes(&lines, 1, "ws");
    assert_eq!(closes[3]["code"], 1000);
    assert_eq!(closes[3]["reason"], "bye");
    let http1 = notes(&lines, 1, "http");
    assert_eq!(http1.len(), 2, "{out}");
    assert_eq!(http1[0]["path"], "/tern/ws");
    assert_eq!(http1[1]["status"], 101);

    // Tunnel: each connection on its own, bodies by Content-Length and chunked.
    assert_eq!(
        frames(&lines, 2),
        vec![
            f("c>s", "tunnel", "HELLO", 1),
            f("s>c", "tunnel", "WELCOME", 1),
            f("s>c", "tunnel", "PUSH", 0),
        ],
        "{out}"
    );
    assert_eq!(find(&lines, 2, "WELCOME")["body"]["user"], "alice");
    assert_eq!(find(&lines, 2, "PUSH")["body"]["body"], "first push");
    assert_eq!(
        frames(&lines, 3),
        vec![f("c>s", "tunnel", "SEND", 2), f("c>s", "tunnel", "PING", 3)],
        "{out}"
    );
    assert_eq!(
        find(&lines, 3, "SEND")["body"]["body"],
        "hello over the tunnel"
    );
    assert_eq!(
        frames(&lines, 4),
        vec![
            f("s>c", "tunnel", "SEND_ACK", 2),
            f("s>c", "tunnel", "PONG", 3),
            f("s>c", "tunnel", "PUSH", 0),
        ],
        "{out}"
    );
    let push = find(&lines, 4, "PUSH");
    assert_eq!(push["body"]["body"], "polled push");
    assert_eq!(push["body"]["inbox_seq"], 9);
    // Request lines are shown, session ids shortened and never in full.
    let short = &SID[..8];
    let paths: Vec<&str> = notes(&lines, 3, "http")
        .iter()
        .filter_map(|v| v["path"].as_str())
        .collect();
    assert_eq!(
        paths,
        vec![
            format!("/tern/up?s={short}…&n=0"),
            format!("/tern/up?s={short}…&n=1")
        ],
        "{out}"
    );
    let statuses: Vec<u64> = notes(&lines, 3, "http")
        .iter()
        .filter_map(|v| v["status"].as_u64())
        .collect();
    assert_eq!(statuses, vec![204, 204]);
    let open_answer = notes(&lines, 2, "http")
        .into_iter()
        .find(|v| v["status"] == 200)
        .unwrap();
    assert_eq!(open_answer["session"], format!("{short}…"));
    assert!(!out.contains(SID), "the session id leaked:\n{out}");
    assert_eq!(notes(&lines, 4, "http").len(), 4, "{out}");

    // PROXY headers: skipped, the real client shown, then native frames.
    assert_eq!(
        frames(&lines, 5),
        vec![
            f("c>s", "native", "HELLO", 1),
            f("c>s", "native", "SEND", 2),
            f("s>c", "native", "WELCOME", 1),
            f("s>c", "native", "SEND_ACK", 2),
        ],
        "{out}"
    );
    assert_eq!(find(&lines, 5, "SEND")["body"]["body"], "via haproxy v1");
    assert_eq!(find(&lines, 5, "HELLO")["offset"], 0);
    let p1 = notes(&lines, 5, "proxy");
    assert_eq!(p1.len(), 1, "{out}");
    assert_eq!(p1[0]["version"], 1);
    assert_eq!(p1[0]["client"], "203.0.113.7:51000");
    assert_eq!(
        frames(&lines, 6),
        vec![
            f("c>s", "native", "HELLO", 1),
            f("s>c", "native", "WELCOME", 1)
        ],
        "{out}"
    );
    let p2 = notes(&lines, 6, "proxy");
    assert_eq!(p2.len(), 1, "{out}");
    assert_eq!(p2[0]["version"], 2);
    assert_eq!(p2[0]["client"], "[2001:db8::17]:40001");

    // TLS: said once, nothing else on that connection.
    let conn7: Vec<&Value> = lines.iter().filter(|v| v["conn"] == 7).collect();
    assert_eq!(conn7.len(), 1, "{out}");
    assert_eq!(conn7[0]["note"], "tls");
    assert_eq!(conn7[0]["transport"], "tls");

    let summary = &lines.last().unwrap()["summary"];
    assert_eq!(summary["errors"], serde_json::json!({}), "{out}");
    assert_eq!(
        summary["transports"],
        serde_json::json!({"native": 2, "tls": 1, "tunnel": 3, "ws": 1})
    );
}

#[test]
fn filters_and_text_output_work_across_transports() {
    let dir = tempfile::tempdir().unwrap();
    let (pcap, ..) = capture(dir.path());

    let (status, out) = terndump(&["--json", "--filter", "type=SEND", "pcap"], &pcap);
    assert_eq!(status, Some(0), "{out}");
    let lines = json_lines(&out);
    let sends: Vec<(u64, &str)> = lines
        .iter()
        .filter(|v| v.get("type").is_some())
        .map(|v| {
            (
                v["conn"].as_u64().unwrap(),
                v["transport"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        sends,
        vec![(1, "ws"), (3, "tunnel"), (5, "native")],
        "{out}"
    );
    assert!(
        lines.iter().all(|v| v.get("note").is_none()),
        "a frame filter hides transport notes:\n{out}"
    );

    let (_, out) = terndump(&["--json", "--filter", "user=bob", "pcap"], &pcap);
    let lines = json_lines(&out);
    let bob: Vec<(u64, &str)> = lines
        .iter()
        .filter(|v| v.get("type").is_some())
        .map(|v| (v["conn"].as_u64().unwrap(), v["type"].as_str().unwrap()))
        .collect();
    assert_eq!(
        bob,
        vec![
            (1, "SEND"),
            (1, "PUSH"),
            (2, "PUSH"),
            (3, "SEND"),
            (4, "PUSH")
        ],
        "{out}"
    );

    let (_, out) = terndump(&["--json", "--filter", "port=50004", "pcap"], &pcap);
    let lines = json_lines(&out);
    assert!(lines
        .iter()
        .filter(|v| v.get("summary").is_none())
        .all(|v| v["conn"] == 4));
    assert_eq!(frames(&lines, 4).len(), 3, "{out}");

    let (_, out) = terndump(&["--filter", "conn=2", "pcap"], &pcap);
    assert!(
        out.lines()
            .any(|l| l.contains("conn=2 s>c tunnel @") && l.contains(" PUSH #0 ")),
        "{out}"
    );
    assert!(out.contains("-- POST /tern/open ("), "{out}");
    assert!(
        out.lines()
            .filter(|l| !l.starts_with("--"))
            .all(|l| !l.contains("conn=1 ")),
        "{out}"
    );

    let (_, out) = terndump(&["pcap"], &pcap);
    assert!(
        out.lines()
            .any(|l| l.contains("conn=1 c>s ws @") && l.contains(" SEND #2 ")),
        "{out}"
    );
    assert!(out.contains("conn=7 c>s tls -- TLS"), "{out}");
    assert!(
        out.contains("-- conn=5 native client 10.0.0.2:50005 server 10.0.0.1:14000 (PROXY: real client 203.0.113.7:51000)"),
        "{out}"
    );
    assert!(
        out.contains("connections: native 2, tls 1 (encrypted, not decoded), tunnel 3, ws 1"),
        "{out}"
    );
    assert!(out.contains("errors: none"), "{out}");
}

#[test]
fn one_direction_files_are_decoded_with_detect() {
    let dir = tempfile::tempdir().unwrap();
    let (_, ws_c, ws_s, opened) = capture(dir.path());
    let types = |file: &Path| {
        let (status, out) = terndump(&["--json", "decode", "--raw", "--detect"], file);
        assert_eq!(status, Some(0), "{out}");
        json_lines(&out)
            .iter()
            .filter_map(|v| {
                v.get("type")
                    .map(|t| format!("{} {} {}", v["dir"], v["transport"], t))
            })
            .collect::<Vec<_>>()
            .join(", ")
            .replace('"', "")
    };
    let path = dir.path().join("ws_client.bin");
    std::fs::write(&path, &ws_c).unwrap();
    assert_eq!(
        types(&path),
        "c>s ws HELLO, c>s ws SEND, c>s ws PING, c>s ws PUSH_ACK"
    );
    let path = dir.path().join("ws_server.bin");
    std::fs::write(&path, &ws_s).unwrap();
    assert_eq!(
        types(&path),
        "s>c ws WELCOME, s>c ws SEND_ACK, s>c ws PUSH, s>c ws PONG"
    );
    let path = dir.path().join("tunnel_open.bin");
    std::fs::write(&path, &opened).unwrap();
    assert_eq!(types(&path), "s>c tunnel WELCOME, s>c tunnel PUSH");

    // Without --detect the bytes are taken for native frames, as test vectors are.
    let (status, out) = terndump(&["--json", "decode", "--raw"], &path);
    assert_eq!(status, Some(1), "{out}");
    assert!(out.contains("BAD_MAGIC"), "{out}");
}

#[test]
fn a_lost_segment_in_a_chunked_stream_still_yields_the_later_frames() {
    let mut cap = Capture::new();
    let mut t = cap.open(50_010, 8080);
    let head =
        "HTTP/1.1 200 OK\r\nContent-Type: application/x-tern\r\nTransfer-Encoding: chunked\r\n\r\n";
    cap.send(
        &mut t,
        true,
        format!("GET /tern/down?s={SID} HTTP/1.1\r\nHost: n\r\n\r\n").as_bytes(),
        &[],
    );
    let first = chunk(&push("bob", "before the hole", 1));
    let lost = chunk(&push("bob", "in the hole", 2));
    let after = cat(&[
        &chunk(&push("bob", "after the hole", 3)),
        &chunk(&push("bob", "and again", 4)),
    ]);
    cap.send(&mut t, false, &cat(&[head.as_bytes(), &first]), &[]);
    t.seq[1] += lost.len() as u32;
    cap.send(&mut t, false, &after, &[]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gap.pcap");
    cap.write(&path);
    let (status, out) = terndump(&["--json", "pcap"], &path);
    assert_eq!(status, Some(0), "{out}");
    let lines = json_lines(&out);
    let bodies: Vec<&str> = lines
        .iter()
        .filter(|v| v["type"] == "PUSH")
        .map(|v| v["body"]["body"].as_str().unwrap())
        .collect();
    assert_eq!(
        bodies,
        vec!["before the hole", "after the hole", "and again"],
        "{out}"
    );
    let gap = notes(&lines, 1, "gap");
    assert_eq!(gap.len(), 1, "{out}");
    assert_eq!(gap[0]["lost"], lost.len());
}
