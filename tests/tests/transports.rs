//! The transports of SPEC §12 end to end: a real `ternd` (native, TLS and HTTP listeners, its dev
//! certificate) and the SDK over native TCP, TLS, WebSocket, WebSocket in TLS and the HTTP tunnel
//! (streamed and polled, plain and in TLS); refusals on the wrong port; tunnel requests without a
//! valid session; a browser-style WebSocket client written by hand; the ladder and the CLI; and
//! squid (forward proxy) and nginx (reverse proxy) in front when they are installed.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use tern_protocol::{
    decode, Body, Capabilities, Close, CloseReason, ErrorCode, Frame, Hello, MessageKind, MsgId,
    Ping, DEFAULT_MAX_BODY, PROTOCOL,
};
use tern_tests::{expect_push, is_push, recv_until, send_text, tern_bin, Node, WAIT};
use tern_tools::{
    Client, ClientConfig, Connection, ConnectionError, DeviceState, Endpoints, Event, Fingerprint,
    HelloParams, Rung, TransportKind, TransportOptions,
};

// ---------------------------------------------------------------------------------------------
// Helpers

/// An address from the node's `ports.json` (`tls`, `http`).
fn listener(node: &Node, key: &str) -> String {
    let text = std::fs::read_to_string(node.data_dir().join("ports.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v[key]
        .as_str()
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| panic!("ternd wrote no {key:?} listener in ports.json: {text}"))
        .to_owned()
}

/// The dev certificate `ternd --dev` makes.
fn cert(node: &Node) -> PathBuf {
    node.data_dir().join("tls").join("cert.pem")
}

fn trust_dev_cert(node: &Node) -> TransportOptions {
    TransportOptions::new().with_ca_file(cert(node))
}

/// One URL per transport, all on `node`.
fn every_url(node: &Node) -> Vec<String> {
    let (tls, http) = (listener(node, "tls"), listener(node, "http"));
    vec![
        format!("tern://{}", node.native),
        format!("tls://{tls}"),
        format!("ws://{http}/tern/ws"),
        format!("wss://{tls}/tern/ws"),
        format!("http://{http}?mode=stream"),
        format!("http://{http}?mode=poll"),
        format!("http://{http}"),
        format!("https://{tls}"),
        format!("https://{tls}?mode=poll"),
        // The plain listener serves native frames too, and TLS carries WebSocket and tunnel.
        format!("tern://{http}"),
    ]
}

fn msg_id(tag: u64) -> MsgId {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&0x7472_616e_7370_6f72u64.to_be_bytes());
    id[8..].copy_from_slice(&tag.to_be_bytes());
    MsgId(id)
}

/// Sends raw bytes and reads until the server closes (or `WAIT` passes).
fn raw_exchange(addr: &str, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "no close from {addr} after {:?} ({e}); got {:?}",
                started.elapsed(),
                String::from_utf8_lossy(&out)
            ),
        }
    }
}

/// Status of one HTTP request on a fresh connection.
fn http_status(addr: &str, request: &str) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => panic!(
                "no answer to {request:?}: {:?}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"))
}

/// The bytes of a real TLS ClientHello, as the SDK sends it.
fn client_hello() -> Vec<u8> {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let grab = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut hello = Vec::new();
        let mut buf = [0u8; 4096];
        // A TLS record: 5-byte header with the length in bytes 3..5.
        while hello.len() < 5
            || hello.len() < 5 + usize::from(u16::from_be_bytes([hello[3], hello[4]]))
        {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "the client closed before its ClientHello");
            hello.extend_from_slice(&buf[..n]);
        }
        hello
    });
    let pin = TransportOptions::new().with_pin(Fingerprint([0; 32]));
    let _ = Connection::open_rung(
        &Rung::parse(&format!("tls://{addr}")).unwrap(),
        &pin,
        Duration::from_millis(500),
    );
    let hello = grab.join().unwrap();
    assert_eq!(&hello[..2], [0x16, 0x03]);
    hello
}

// ---------------------------------------------------------------------------------------------
// Every transport reaches the same sessions

#[test]
fn a_message_crosses_between_every_transport_and_a_native_device() {
    let node = Node::start();
    let options = trust_dev_cert(&node);
    for (i, url) in every_url(&node).iter().enumerate() {
        let far_device = format!("far{i}");
        let mut far = node.connect_via(url, &options, "alice", &far_device);
        assert_eq!(far.welcome().unwrap().user, "alice");
        let mut near = node.connect("alice", &format!("near{i}"));
        let i = i as u64;
        // Over the transport, to the native device (the sender's other device gets a PUSH)…
        send_text(&mut far, "bob", msg_id(2 * i), &format!("from {url}"));
        expect_push(&mut near, msg_id(2 * i), &format!("from {url}"));
        // …and back.
        send_text(&mut near, "bob", msg_id(2 * i + 1), &format!("to {url}"));
        expect_push(&mut far, msg_id(2 * i + 1), &format!("to {url}"));
        // A request/answer pair and a burst of frames written back to back.
        for k in 0..20u32 {
            far.send(&Frame::new(1000 + k, Body::Ping(Ping { time: k.into() })))
                .unwrap();
        }
        for k in 0..20u32 {
            let (f, _) = recv_until(&mut far, |f| matches!(f.body, Body::Pong(_)));
            assert_eq!(f.request_id, 1000 + k, "{url}: PONGs in order");
        }
        far.shutdown();
    }
}

#[test]
fn the_reliable_client_works_over_the_tunnel_and_websocket() {
    let node = Node::start();
    let (tls, http) = (listener(&node, "tls"), listener(&node, "http"));
    let mut bob = node.connect("bob", "phone");
    for (i, url) in [
        format!("http://{http}?mode=poll"),
        format!("https://{tls}"),
        format!("wss://{tls}/tern/ws"),
    ]
    .into_iter()
    .enumerate()
    {
        let device = format!("app{i}");
        let token = node.token("alice", Some(&device), 3600);
        let ladder = Endpoints::parse(&url)
            .unwrap()
            .with_options(trust_dev_cert(&node));
        let client = Client::start(ClientConfig::new("", token, device).with_endpoints(ladder));
        let ack = client
            .send_wait("bob", MessageKind::TEXT, b"via client".to_vec(), WAIT)
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        let (f, _) = recv_until(&mut bob, is_push);
        let Body::Push(m) = f.body else {
            unreachable!()
        };
        assert_eq!(m.msg_id, ack.msg_id);
        let id = msg_id(500 + i as u64);
        send_text(&mut bob, "alice", id, "to the client");
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "{url}: no message from bob");
            if let Some(Event::Message(m)) = client.next_event(Duration::from_millis(100)) {
                if m.msg_id == id {
                    break;
                }
            }
        }
        client.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// TLS trust

#[test]
fn tls_trusts_the_dev_certificate_or_its_fingerprint() {
    let node = Node::start();
    let tls = listener(&node, "tls");
    let url = format!("tls://{tls}");
    let pin = Fingerprint::of_pem_file(&cert(&node)).unwrap();
    let pinned = TransportOptions::new().with_pin(pin);
    node.connect_via(&url, &pinned, "alice", "phone");
    // The dev certificate names localhost too.
    let port = tls.rsplit(':').next().unwrap();
    node.connect_via(
        &format!("wss://localhost:{port}/tern/ws"),
        &trust_dev_cert(&node),
        "alice",
        "phone",
    );
    let hello = HelloParams::new(node.token("alice", Some("phone"), 60), "phone");
    let rung = Rung::parse(&url).unwrap();
    for options in [
        TransportOptions::new().with_pin(Fingerprint([1; 32])),
        TransportOptions::new(),
    ] {
        let e = Connection::connect_rung(&rung, &options, &hello, WAIT).unwrap_err();
        assert!(matches!(e, ConnectionError::Tls(_)), "{e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Refusals are answers

#[test]
fn the_wrong_protocol_on_a_port_gets_a_clean_refusal() {
    let node = Node::start();
    let (tls, http) = (listener(&node, "tls"), listener(&node, "http"));

    // Plaintext HTTP on the TLS port: 400 with a body saying why.
    let answer = raw_exchange(&tls, b"GET /tern/ws HTTP/1.1\r\nHost: x\r\n\r\n");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.ends_with("this port requires TLS"), "{text}");

    // Native frames on the TLS port: ERROR UNSUPPORTED_VERSION.
    let hello = HelloParams::new(node.token("alice", Some("phone"), 60), "phone");
    let e = Connection::connect_rung(
        &Rung::parse(&format!("tern://{tls}")).unwrap(),
        &TransportOptions::new(),
        &hello,
        WAIT,
    )
    .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UNSUPPORTED_VERSION), "{e}");
    assert!(e.to_string().contains("this port requires TLS"), "{e}");

    // A TLS ClientHello on the plain listeners: the protocol_version alert, then close.
    let hello_bytes = client_hello();
    for addr in [&node.native, &http] {
        let started = Instant::now();
        assert_eq!(
            raw_exchange(addr, &hello_bytes),
            [0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x46],
            "{addr}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        // The SDK reports it as a TLS error at once.
        let started = Instant::now();
        let e = Connection::open_rung(
            &Rung::parse(&format!("tls://{addr}")).unwrap(),
            &trust_dev_cert(&node),
            WAIT,
        )
        .unwrap_err();
        assert!(matches!(e, ConnectionError::Tls(_)), "{e}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}

#[test]
fn tunnel_requests_need_a_live_session() {
    let node = Node::start();
    let http = listener(&node, "http");
    let host = format!("Host: {http}\r\n");
    let bogus = "0123456789abcdef".repeat(3);
    let cases = [
        (
            format!("POST /tern/up?n=0 HTTP/1.1\r\n{host}Content-Length: 0\r\n\r\n"),
            401,
        ),
        (format!("GET /tern/down HTTP/1.1\r\n{host}\r\n"), 401),
        (format!("GET /tern/poll?wait=1 HTTP/1.1\r\n{host}\r\n"), 401),
        (
            format!("POST /tern/up?s={bogus}&n=0 HTTP/1.1\r\n{host}Content-Length: 0\r\n\r\n"),
            403,
        ),
        (
            format!("GET /tern/down?s={bogus} HTTP/1.1\r\n{host}\r\n"),
            403,
        ),
        (
            format!("GET /tern/poll?s={bogus}&wait=1 HTTP/1.1\r\n{host}\r\n"),
            403,
        ),
        // A routing part this node serves, a session that does not exist.
        (
            format!(
                "GET /tern/down?s={}{} HTTP/1.1\r\n{host}\r\n",
                "0".repeat(16),
                &bogus[..32]
            ),
            403,
        ),
        (
            format!("GET /tern/down?s=nothex HTTP/1.1\r\n{host}\r\n"),
            403,
        ),
        (format!("GET /tern/nothing HTTP/1.1\r\n{host}\r\n"), 404),
        (format!("DELETE /tern/open HTTP/1.1\r\n{host}\r\n"), 405),
    ];
    // Checked at the end, so that one wrong answer does not hide the others.
    let mut wrong = Vec::new();
    for (request, status) in &cases {
        let got = http_status(&http, request);
        if got != *status {
            wrong.push(format!("{got} instead of {status} for {request:?}"));
        }
    }

    // A live session: its id with a wrong random part is refused; the session is not harmed.
    let mut conn = node.connect_via(
        &format!("http://{http}"),
        &TransportOptions::new(),
        "alice",
        "phone",
    );
    let sid = conn.tunnel_session().unwrap();
    assert_eq!(sid.len(), 48);
    assert!(sid
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    let last = if sid.ends_with('0') { "1" } else { "0" };
    let forged = format!("{}{last}", &sid[..47]);
    for request in [
        format!("GET /tern/down?s={forged} HTTP/1.1\r\n{host}\r\n"),
        format!("POST /tern/up?s={forged}&n=0 HTTP/1.1\r\n{host}Content-Length: 0\r\n\r\n"),
    ] {
        assert_eq!(http_status(&http, &request), 403, "{request}");
    }
    let f = conn.request(Body::Ping(Ping { time: 1 }), WAIT).unwrap();
    assert!(matches!(f.body, Body::Pong(_)));

    // Out of order upstream: 409.
    let request = format!("POST /tern/up?s={sid}&n=99 HTTP/1.1\r\n{host}Content-Length: 0\r\n\r\n");
    assert_eq!(http_status(&http, &request), 409);

    // A session that has ended answers 403.
    conn.send(&Frame::new(
        0,
        Body::Close(Close {
            reason: CloseReason::NORMAL,
            retry_after_ms: 0,
            message: "bye".into(),
        }),
    ))
    .unwrap();
    conn.shutdown();
    let request = format!("GET /tern/poll?s={sid}&wait=1 HTTP/1.1\r\n{host}\r\n");
    let deadline = Instant::now() + WAIT;
    while http_status(&http, &request) != 403 {
        assert!(
            Instant::now() < deadline,
            "the closed session still answers"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

// ---------------------------------------------------------------------------------------------
// A browser's WebSocket, by hand (RFC 6455: masked client frames)

/// One client frame: FIN, opcode, masked payload.
fn ws_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![(u8::from(fin) << 7) | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask: [u8; 4] = rand_mask();
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

fn rand_mask() -> [u8; 4] {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    (nanos | 0x0101_0101).to_le_bytes()
}

/// Reads one server frame: (fin, opcode, payload); server frames are not masked.
fn ws_read(s: &mut TcpStream) -> (bool, u8, Vec<u8>) {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).unwrap();
    assert_eq!(h[1] & 0x80, 0, "a server frame must not be masked");
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).unwrap();
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).unwrap();
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    let mut payload = vec![0u8; usize::try_from(len).unwrap()];
    s.read_exact(&mut payload).unwrap();
    (h[0] & 0x80 != 0, h[0] & 0x0f, payload)
}

#[test]
fn a_browser_style_websocket_client() {
    let node = Node::start();
    let http = listener(&node, "http");
    let mut s = TcpStream::connect(&http).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    // RFC 6455's own example key, and what a browser sends around it.
    write!(
        s,
        "GET /tern/ws HTTP/1.1\r\nHost: {http}\r\nConnection: Upgrade\r\nPragma: no-cache\r\n\
         Cache-Control: no-cache\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\n\
         Upgrade: websocket\r\nOrigin: http://localhost:3000\r\nSec-WebSocket-Version: 13\r\n\
         Accept-Encoding: gzip, deflate, br\r\nAccept-Language: en-US,en;q=0.9\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
         Sec-WebSocket-Protocol: tern.v1\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    assert!(head.contains("sec-websocket-protocol: tern.v1"), "{head}");
    assert!(
        !head.contains("permessage-deflate"),
        "no compression was agreed to: frames stay binary as sent"
    );

    let token = node.token("carol", Some("browser"), 3600);
    let hello = Frame::new(
        1,
        Body::Hello(Hello {
            protocol: PROTOCOL,
            capabilities: Capabilities::ALL,
            max_frame: DEFAULT_MAX_BODY,
            token: token.as_str().into(),
            device: "browser".into(),
            resume_inbox_seq: 0,
            client: "browser-test".into(),
        }),
    )
    .to_bytes()
    .unwrap();
    s.write_all(&ws_frame(true, 2, &hello)).unwrap();
    // One tern frame across two messages, then two in one message, one message fragmented.
    let ping = |rid: u32| {
        Frame::new(rid, Body::Ping(Ping { time: rid.into() }))
            .to_bytes()
            .unwrap()
    };
    let p2 = ping(2);
    s.write_all(&ws_frame(true, 2, &p2[..5])).unwrap();
    s.write_all(&ws_frame(true, 2, &p2[5..])).unwrap();
    let mut two = ping(3);
    two.extend_from_slice(&ping(4));
    s.write_all(&ws_frame(false, 2, &two[..7])).unwrap();
    s.write_all(&ws_frame(true, 0, &two[7..])).unwrap();
    // A WebSocket ping is answered by a WebSocket pong, not by tern.
    s.write_all(&ws_frame(true, 9, b"are you there")).unwrap();

    let mut stream = Vec::new();
    let mut frames = Vec::new();
    let mut pong = None;
    while frames.len() < 4 || pong.is_none() {
        let (_, opcode, payload) = ws_read(&mut s);
        match opcode {
            0 | 2 => stream.extend_from_slice(&payload),
            10 => pong = Some(payload),
            1 => panic!("the server sent a text message"),
            other => panic!("unexpected opcode {other}"),
        }
        while let Some((f, used)) = decode(&stream, DEFAULT_MAX_BODY).unwrap() {
            frames.push(f.into_owned());
            stream.drain(..used);
        }
    }
    assert!(matches!(&frames[0].body, Body::Welcome(w) if w.user == "carol"));
    for (f, rid) in frames[1..].iter().zip(2..) {
        assert!(matches!(f.body, Body::Pong(_)));
        assert_eq!(f.request_id, rid);
    }
    assert_eq!(pong.unwrap(), b"are you there");

    // A text message is a protocol error: close with status 1003.
    s.write_all(&ws_frame(true, 1, b"hello?")).unwrap();
    loop {
        let (_, opcode, payload) = ws_read(&mut s);
        if opcode == 8 {
            assert_eq!(payload[..2], 1003u16.to_be_bytes());
            break;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The ladder and the CLI

#[test]
fn the_ladder_and_the_cli_reach_the_node_past_dead_rungs() {
    let node = Node::start();
    let (tls, http) = (listener(&node, "tls"), listener(&node, "http"));
    let refused = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let hanging = TcpListener::bind("127.0.0.1:0").unwrap();
    let hanging = hanging
        .local_addr()
        .map(|a| (a.to_string(), hanging))
        .unwrap();

    let mut ladder = Endpoints::parse(&format!(
        "tern://{refused},tls://{}?timeout=0.5,ws://{http}/tern/ws",
        hanging.0
    ))
    .unwrap()
    .with_options(trust_dev_cert(&node));
    let hello = HelloParams::new(node.token("alice", Some("phone"), 3600), "phone");
    let started = Instant::now();
    let conn = ladder.connect(&hello).unwrap();
    assert!(started.elapsed() >= Duration::from_millis(450));
    assert_eq!(conn.transport_kind(), TransportKind::Ws);
    drop(conn);
    let started = Instant::now();
    ladder.connect(&hello).unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(450),
        "the rung that worked is tried first"
    );

    // The CLI: a list of servers, the dev certificate, a state file that keeps the rung.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let token = node.token("alice", Some("cli"), 3600);
    let ca = cert(&node);
    let run = |args: &[&str]| {
        let out = Command::new(tern_bin())
            .args(args)
            .args(["--token", &token, "--state"])
            .arg(&state)
            .arg("--ca")
            .arg(&ca)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tern {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let servers = format!("{refused},https://{tls}");
    let out = run(&[
        "--server",
        &servers,
        "--json",
        "send",
        "--to",
        "bob",
        "over https",
    ]);
    assert!(out.contains("\"type\":\"send_ack\""), "{out}");
    assert_eq!(
        DeviceState::load(&state).unwrap().rung,
        Some(format!("https://{tls}"))
    );
    let pin = Fingerprint::of_pem_file(&ca).unwrap().to_string();
    let out = Command::new(tern_bin())
        .args(["--server", &format!("wss://{tls}/tern/ws"), "--pin", &pin])
        .args(["--token", &token, "--json", "history", "--with", "bob"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("over https"), "{text}");
}

// Real proxies in front (squid, nginx, haproxy) are exercised in `proxies.rs`.
