//! The SDK's transports and ladder against small in-process servers: a fake node (HELLO →
//! WELCOME, PING → PONG) behind native TCP, TLS, WebSocket and an HTTP tunnel server written
//! from SPEC §12, plus a CONNECT proxy, listeners that refuse and listeners that hang. These run
//! without `ternd`; `tests/tests/transports.rs` runs the same paths against the real node.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tern_protocol::{
    decode, Body, Capabilities, Close, CloseReason, ErrorCode, Frame, Ping, Welcome,
    DEFAULT_MAX_BODY, PROTOCOL,
};
use tern_tools::{
    Client, ClientConfig, Connection, ConnectionError, DeviceState, Endpoints, Event, Fingerprint,
    HelloParams, Rung, TlsError, TransportKind, TransportOptions,
};

const WAIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// The fake node

/// Session logic of a node reduced to what transports need.
#[derive(Default)]
struct FakeNode {
    rbuf: Vec<u8>,
    welcomed: bool,
    closed: bool,
    /// WELCOME's heartbeat (default 30 s).
    heartbeat_secs: u16,
}

fn push(out: &mut Vec<u8>, f: Frame<'_>) {
    out.extend_from_slice(&f.to_bytes().unwrap());
}

impl FakeNode {
    /// Bytes from the client in, bytes to the client out.
    fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.rbuf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while !self.closed {
            let (f, used) = match decode(&self.rbuf, tern_protocol::ABS_MAX_BODY) {
                Ok(Some((f, used))) => (f.into_owned(), used),
                Ok(None) => break,
                Err(_) => {
                    self.closed = true;
                    break;
                }
            };
            self.rbuf.drain(..used);
            let rid = f.request_id;
            match f.body {
                Body::Hello(h) if h.token == "bad" => {
                    let e = tern_protocol::Error {
                        code: ErrorCode::AUTH_INVALID,
                        message: "bad token".into(),
                    };
                    push(&mut out, Frame::new(rid, Body::Error(e)));
                    let c = Close {
                        reason: CloseReason::NORMAL,
                        retry_after_ms: 0,
                        message: "bye".into(),
                    };
                    push(&mut out, Frame::new(0, Body::Close(c)));
                    self.closed = true;
                }
                Body::Hello(h) => {
                    self.welcomed = true;
                    let w = Welcome {
                        protocol: PROTOCOL,
                        capabilities: Capabilities::ALL,
                        max_frame: DEFAULT_MAX_BODY,
                        heartbeat_secs: if self.heartbeat_secs == 0 {
                            30
                        } else {
                            self.heartbeat_secs
                        },
                        idle_timeout_secs: 90,
                        user: h.token.to_string().into(),
                        session_id: 7,
                        server_time: 0,
                        inbox_head: 0,
                        node: "fake".into(),
                    };
                    push(&mut out, Frame::new(rid, Body::Welcome(w)));
                }
                Body::Ping(p) => push(&mut out, Frame::new(rid, Body::Pong(Ping { time: p.time }))),
                Body::Close(_) => self.closed = true,
                _ => {}
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Servers

trait Rw: Read + Write + Send {}
impl<T: Read + Write + Send> Rw for T {}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Native,
    Ws,
    Tunnel,
}

/// Knobs and records of the tunnel server.
#[derive(Default)]
struct TunnelState {
    sessions: HashMap<String, Sess>,
    next_id: u64,
    /// Requests seen: "METHOD path?query", with "abs " in front of absolute URIs.
    log: Vec<String>,
    /// Act as a proxy that buffers responses: open's stream sends its head and nothing else.
    buffering: bool,
    /// End every downstream after its first data chunk (a proxy cutting long responses).
    cut_downstreams: bool,
    /// Apply the first `up` but drop the connection instead of answering.
    drop_first_up_answer: bool,
    /// Deliver WELCOME on open's stream, then hold every later frame back (a proxy that
    /// buffers once the response is under way).
    stall_after_open: bool,
    /// WELCOME's heartbeat.
    heartbeat_secs: u16,
}

struct Sess {
    node: FakeNode,
    out: Vec<u8>,
    next_n: u64,
    ended: bool,
    /// Bumped by every new downstream; an older one ends.
    generation: u64,
}

#[derive(Default)]
struct Server {
    tls: Option<Arc<rustls::ServerConfig>>,
    accepted: AtomicUsize,
    alpn: Mutex<Vec<Option<Vec<u8>>>>,
    ws_protocols: Mutex<Vec<Option<String>>>,
    tunnel: Mutex<TunnelState>,
    cv: Condvar,
}

struct TestCert {
    der: Vec<u8>,
    pem_path: std::path::PathBuf,
    config: Arc<rustls::ServerConfig>,
    _dir: tempfile::TempDir,
}

fn test_cert() -> &'static TestCert {
    static CERT: std::sync::OnceLock<TestCert> = std::sync::OnceLock::new();
    CERT.get_or_init(|| {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        let der = ck.cert.der().to_vec();
        let dir = tempfile::tempdir().unwrap();
        let pem_path = dir.path().join("cert.pem");
        std::fs::write(&pem_path, ck.cert.pem()).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
            rustls::pki_types::PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()),
        );
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone().into()], key)
        .unwrap();
        config.alpn_protocols = vec![b"tern/1".to_vec(), b"http/1.1".to_vec()];
        TestCert {
            der,
            pem_path,
            config: Arc::new(config),
            _dir: dir,
        }
    })
}

fn trust_test_ca() -> TransportOptions {
    TransportOptions::new().with_ca_file(&test_cert().pem_path)
}

/// Starts a server of `kind` (in TLS if `tls`) on a fresh port; returns its address.
fn start(kind: Kind, tls: bool) -> (String, Arc<Server>) {
    start_with(kind, tls, TunnelState::default())
}

fn start_with(kind: Kind, tls: bool, tunnel: TunnelState) -> (String, Arc<Server>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = Arc::new(Server {
        tls: tls.then(|| test_cert().config.clone()),
        tunnel: Mutex::new(tunnel),
        ..Server::default()
    });
    let s = server.clone();
    std::thread::spawn(move || {
        for sock in listener.incoming() {
            let Ok(sock) = sock else { continue };
            s.accepted.fetch_add(1, Ordering::SeqCst);
            let s = s.clone();
            std::thread::spawn(move || s.serve(sock, kind));
        }
    });
    (addr, server)
}

impl Server {
    fn serve(&self, sock: TcpStream, kind: Kind) {
        sock.set_nodelay(true).ok();
        let mut stream: Box<dyn Rw> = match &self.tls {
            Some(cfg) => {
                let conn = rustls::ServerConnection::new(cfg.clone()).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, sock);
                while tls.conn.is_handshaking() {
                    if tls.conn.complete_io(&mut tls.sock).is_err() {
                        return;
                    }
                }
                self.alpn
                    .lock()
                    .unwrap()
                    .push(tls.conn.alpn_protocol().map(<[u8]>::to_vec));
                Box::new(tls)
            }
            None => Box::new(sock),
        };
        match kind {
            Kind::Native => serve_native(&mut stream),
            Kind::Ws => self.serve_ws(stream),
            Kind::Tunnel => self.serve_tunnel(stream),
        }
    }

    // The callback's error type is tungstenite's (an HTTP response), not ours to shrink.
    #[allow(clippy::result_large_err)]
    fn serve_ws(&self, stream: Box<dyn Rw>) {
        let protocols = &self.ws_protocols;
        let callback = |req: &tungstenite::handshake::server::Request,
                        mut resp: tungstenite::handshake::server::Response| {
            let offered = req
                .headers()
                .get("Sec-WebSocket-Protocol")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            if offered.as_deref() == Some("tern.v1") {
                resp.headers_mut().insert(
                    "Sec-WebSocket-Protocol",
                    tungstenite::http::HeaderValue::from_static("tern.v1"),
                );
            }
            protocols.lock().unwrap().push(offered);
            Ok(resp)
        };
        let Ok(mut ws) = tungstenite::accept_hdr(stream, callback) else {
            return;
        };
        let mut node = FakeNode::default();
        while let Ok(msg) = ws.read() {
            match msg {
                tungstenite::Message::Binary(b) => {
                    let out = node.feed(&b);
                    if !out.is_empty() && ws.send(tungstenite::Message::binary(out)).is_err() {
                        return;
                    }
                    if node.closed {
                        let _ = ws.close(None);
                    }
                }
                tungstenite::Message::Close(_) => return,
                _ => {}
            }
        }
    }

    fn serve_tunnel(&self, mut stream: Box<dyn Rw>) {
        let mut buf = Vec::new();
        while let Some((method, target, body)) = read_request(&mut stream, &mut buf) {
            let (abs, rest) = match target.strip_prefix("http://") {
                Some(r) => (true, &r[r.find('/').unwrap_or(r.len())..]),
                None => (false, target.as_str()),
            };
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            let q: HashMap<&str, &str> = query
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .collect();
            self.tunnel
                .lock()
                .unwrap()
                .log
                .push(format!("{}{method} {rest}", if abs { "abs " } else { "" }));
            let keep = match (method.as_str(), path) {
                ("POST", "/tern/open") => {
                    self.open(&mut stream, q.get("mode") == Some(&"poll"), &body)
                }
                ("POST", "/tern/up") => self.up(&mut stream, &q, &body),
                ("GET", "/tern/down") => match self.session_check(&mut stream, &q) {
                    Some(sid) => {
                        write_head(&mut stream, 200, &[("Transfer-Encoding", "chunked")]);
                        self.downstream(&mut stream, &sid)
                    }
                    None => true,
                },
                ("GET", "/tern/poll") => match self.session_check(&mut stream, &q) {
                    Some(sid) => self.poll(&mut stream, &sid),
                    None => true,
                },
                ("POST", "/tern/close") => {
                    if let Some(sid) = self.session_check(&mut stream, &q) {
                        let mut t = self.tunnel.lock().unwrap();
                        if let Some(s) = t.sessions.get_mut(&sid) {
                            s.ended = true;
                        }
                        drop(t);
                        self.cv.notify_all();
                        respond(&mut stream, 204, &[], b"");
                    }
                    true
                }
                _ => {
                    respond(&mut stream, 404, &[], b"no such path");
                    true
                }
            };
            if !keep {
                return;
            }
        }
    }

    /// 401 without `s`, 403 for an unknown or ended session; the session id otherwise.
    fn session_check(&self, stream: &mut Box<dyn Rw>, q: &HashMap<&str, &str>) -> Option<String> {
        let Some(sid) = q.get("s") else {
            respond(stream, 401, &[], b"no session");
            return None;
        };
        let t = self.tunnel.lock().unwrap();
        match t.sessions.get(*sid) {
            Some(s) if !s.ended => Some((*sid).to_owned()),
            _ => {
                drop(t);
                respond(stream, 403, &[], b"no such session");
                None
            }
        }
    }

    fn open(&self, stream: &mut Box<dyn Rw>, poll: bool, hello: &[u8]) -> bool {
        let mut node = FakeNode {
            heartbeat_secs: self.tunnel.lock().unwrap().heartbeat_secs,
            ..FakeNode::default()
        };
        let out = node.feed(hello);
        if !node.welcomed {
            respond(stream, 401, &[("Content-Type", "application/x-tern")], &out);
            return true;
        }
        let mut t = self.tunnel.lock().unwrap();
        t.next_id += 1;
        let sid = format!("{:048x}", t.next_id);
        t.sessions.insert(
            sid.clone(),
            Sess {
                node,
                out: Vec::new(),
                next_n: 0,
                ended: false,
                generation: 0,
            },
        );
        let buffering = t.buffering;
        let stall = t.stall_after_open;
        drop(t);
        if poll {
            respond(stream, 200, &[("X-Tern-Session", &sid)], &out);
            return true;
        }
        write_head(
            stream,
            200,
            &[("Transfer-Encoding", "chunked"), ("X-Tern-Session", &sid)],
        );
        if buffering {
            // Everything stays in the "proxy" until the session ends.
            let mut t = self.tunnel.lock().unwrap();
            while !t.sessions.get(&sid).is_none_or(|s| s.ended) {
                t = self.cv.wait(t).unwrap();
            }
            return false;
        }
        write_chunk(stream, &out);
        if stall {
            // Later frames stay in the session for a poll to take.
            let mut t = self.tunnel.lock().unwrap();
            while !t.sessions.get(&sid).is_none_or(|s| s.ended) {
                t = self.cv.wait(t).unwrap();
            }
            return false;
        }
        self.downstream(stream, &sid)
    }

    /// Streams the session's frames as chunks until it ends or a newer downstream replaces it.
    fn downstream(&self, stream: &mut Box<dyn Rw>, sid: &str) -> bool {
        let mut t = self.tunnel.lock().unwrap();
        let Some(s) = t.sessions.get_mut(sid) else {
            return false;
        };
        s.generation += 1;
        let mine = s.generation;
        let mut sent = 0;
        loop {
            let cut = t.cut_downstreams;
            let Some(s) = t.sessions.get_mut(sid) else {
                return false;
            };
            if s.generation != mine || (s.ended && s.out.is_empty()) || (cut && sent > 0) {
                drop(t);
                return write_chunk(stream, b"");
            }
            if !s.out.is_empty() {
                let out = std::mem::take(&mut s.out);
                drop(t);
                if !write_chunk(stream, &out) {
                    return false;
                }
                sent += 1;
                t = self.tunnel.lock().unwrap();
                continue;
            }
            t = self
                .cv
                .wait_timeout(t, Duration::from_millis(200))
                .unwrap()
                .0;
        }
    }

    fn poll(&self, stream: &mut Box<dyn Rw>, sid: &str) -> bool {
        let until = Instant::now() + Duration::from_secs(2);
        let mut t = self.tunnel.lock().unwrap();
        loop {
            let Some(s) = t.sessions.get_mut(sid) else {
                return false;
            };
            s.generation += 1;
            if !s.out.is_empty() || s.ended || Instant::now() >= until {
                let out = std::mem::take(&mut s.out);
                drop(t);
                respond(stream, 200, &[], &out);
                return true;
            }
            t = self
                .cv
                .wait_timeout(t, Duration::from_millis(100))
                .unwrap()
                .0;
        }
    }

    fn up(&self, stream: &mut Box<dyn Rw>, q: &HashMap<&str, &str>, body: &[u8]) -> bool {
        let Some(sid) = self.session_check(stream, q) else {
            return true;
        };
        // The node's smallest body limit.
        if body.len() > 1 << 20 {
            respond(stream, 413, &[], b"body too large");
            return true;
        }
        let n: u64 = q.get("n").and_then(|n| n.parse().ok()).unwrap_or(u64::MAX);
        let mut t = self.tunnel.lock().unwrap();
        let drop_answer = std::mem::take(&mut t.drop_first_up_answer);
        let Some(s) = t.sessions.get_mut(&sid) else {
            return false;
        };
        if n == s.next_n {
            s.next_n += 1;
            let out = s.node.feed(body);
            s.out.extend_from_slice(&out);
            if s.node.closed {
                s.ended = true;
            }
            drop(t);
            self.cv.notify_all();
            if drop_answer {
                return false;
            }
            respond(stream, 204, &[], b"");
        } else if n + 1 == s.next_n {
            drop(t);
            respond(stream, 204, &[], b"");
        } else {
            drop(t);
            respond(stream, 409, &[], b"out of order");
        }
        true
    }
}

fn serve_native(stream: &mut Box<dyn Rw>) {
    let mut node = FakeNode::default();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let out = node.feed(&buf[..n]);
        if stream
            .write_all(&out)
            .and_then(|()| stream.flush())
            .is_err()
            || node.closed
        {
            return;
        }
    }
}

/// Reads one request: (method, target, body).
fn read_request(stream: &mut Box<dyn Rw>, buf: &mut Vec<u8>) -> Option<(String, String, Vec<u8>)> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(len)) = req.parse(buf) {
            let method = req.method?.to_owned();
            let target = req.path?.to_owned();
            let clen: usize = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < len + clen {
                let mut chunk = [0u8; 16 * 1024];
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let body = buf[len..len + clen].to_vec();
            buf.drain(..len + clen);
            return Some((method, target, body));
        }
        let mut chunk = [0u8; 16 * 1024];
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn write_head(stream: &mut Box<dyn Rw>, status: u16, headers: &[(&str, &str)]) -> bool {
    let mut head = format!("HTTP/1.1 {status} X\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).is_ok() && stream.flush().is_ok()
}

fn respond(stream: &mut Box<dyn Rw>, status: u16, headers: &[(&str, &str)], body: &[u8]) {
    let len = body.len().to_string();
    let mut all = headers.to_vec();
    all.push(("Content-Length", &len));
    if write_head(stream, status, &all) {
        let _ = stream.write_all(body).and_then(|()| stream.flush());
    }
}

fn write_chunk(stream: &mut Box<dyn Rw>, data: &[u8]) -> bool {
    let mut c = format!("{:x}\r\n", data.len()).into_bytes();
    c.extend_from_slice(data);
    c.extend_from_slice(b"\r\n");
    if data.is_empty() {
        c.extend_from_slice(b"\r\n");
    }
    stream.write_all(&c).is_ok() && stream.flush().is_ok()
}

/// A forward proxy that only does CONNECT; records the targets.
fn start_connect_proxy() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let targets = Arc::new(Mutex::new(Vec::new()));
    let t = targets.clone();
    std::thread::spawn(move || {
        for sock in listener.incoming() {
            let Ok(mut client) = sock else { continue };
            let t = t.clone();
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if client.read(&mut byte).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let mut words = text.split_whitespace();
                if words.next() != Some("CONNECT") {
                    let _ = client.write_all(b"HTTP/1.1 405 X\r\nContent-Length: 0\r\n\r\n");
                    return;
                }
                let target = words.next().unwrap_or_default().to_owned();
                t.lock().unwrap().push(target.clone());
                let Ok(upstream) = TcpStream::connect(&target) else {
                    let _ = client.write_all(b"HTTP/1.1 502 X\r\nContent-Length: 0\r\n\r\n");
                    return;
                };
                let _ = client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
                let (mut c2, mut u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c2, &mut u2);
                    let _ = u2.shutdown(std::net::Shutdown::Write);
                });
                let (mut u, mut c) = (upstream, client);
                let _ = std::io::copy(&mut u, &mut c);
                let _ = c.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (addr, targets)
}

/// A port nobody listens on (connections are refused).
fn refusing_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// A listener that never accepts: the kernel completes TCP handshakes, nothing ever answers.
fn hanging_listener() -> (String, TcpListener) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    (l.local_addr().unwrap().to_string(), l)
}

// ---------------------------------------------------------------------------------------------
// Client side helpers

fn hello(user: &str) -> HelloParams {
    HelloParams::new(user, "phone")
}

/// Sends `count` PINGs back to back, then expects their PONGs in order; then one request.
fn exercise(conn: &mut Connection, count: u32) {
    let mut rids = Vec::new();
    for i in 0..count {
        let rid = conn.next_request_id();
        rids.push(rid);
        conn.send(&Frame::new(rid, Body::Ping(Ping { time: u64::from(i) })))
            .unwrap();
    }
    for (i, rid) in rids.into_iter().enumerate() {
        let f = conn.recv(WAIT).unwrap().expect("a PONG");
        assert_eq!(f.request_id, rid);
        assert!(
            matches!(f.body, Body::Pong(Ping { time }) if time == i as u64),
            "{f:?}"
        );
    }
    let f = conn.request(Body::Ping(Ping { time: 99 }), WAIT).unwrap();
    assert!(matches!(f.body, Body::Pong(_)));
    // Nothing else arrives: every frame was answered once.
    assert!(conn.recv(Duration::from_millis(100)).unwrap().is_none());
}

fn connect(url: &str, options: &TransportOptions) -> Result<Connection, ConnectionError> {
    Connection::connect_rung(&Rung::parse(url).unwrap(), options, &hello("alice"), WAIT)
}

fn tunnel_log(server: &Server) -> Vec<String> {
    server.tunnel.lock().unwrap().log.clone()
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn every_transport_carries_the_frame_stream() {
    let (native, _) = start(Kind::Native, false);
    let (tls, tls_server) = start(Kind::Native, true);
    let (ws, ws_server) = start(Kind::Ws, false);
    let (wss, wss_server) = start(Kind::Ws, true);
    let (http, _) = start(Kind::Tunnel, false);
    let (https, https_server) = start(Kind::Tunnel, true);
    let options = trust_test_ca();
    for (url, kind) in [
        (native.clone(), TransportKind::Native),
        (format!("tern://{native}"), TransportKind::Native),
        (format!("tls://{tls}"), TransportKind::Tls),
        (format!("ws://{ws}/tern/ws"), TransportKind::Ws),
        (format!("wss://{wss}/tern/ws"), TransportKind::Wss),
        (format!("http://{http}"), TransportKind::Tunnel),
        (format!("http://{http}?mode=stream"), TransportKind::Tunnel),
        (format!("http://{http}?mode=poll"), TransportKind::Tunnel),
        (format!("https://{https}"), TransportKind::TunnelTls),
        (
            format!("https://{https}?mode=poll"),
            TransportKind::TunnelTls,
        ),
    ] {
        let mut conn = connect(&url, &options).unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(conn.transport_kind(), kind);
        assert_eq!(conn.welcome().unwrap().user, "alice", "{url}");
        exercise(&mut conn, 50);
        conn.shutdown();
    }
    // ALPN: tern/1 for native frames in TLS, http/1.1 for WebSocket and the tunnel.
    assert_eq!(
        tls_server.alpn.lock().unwrap().as_slice(),
        [Some(b"tern/1".to_vec())]
    );
    assert!(wss_server
        .alpn
        .lock()
        .unwrap()
        .iter()
        .all(|a| a.as_deref() == Some(b"http/1.1")));
    assert!(https_server
        .alpn
        .lock()
        .unwrap()
        .iter()
        .all(|a| a.as_deref() == Some(b"http/1.1")));
    assert_eq!(
        ws_server.ws_protocols.lock().unwrap().as_slice(),
        [Some("tern.v1".to_owned())]
    );
}

#[test]
fn tls_trust_by_pin_ca_or_nothing() {
    let (tls, _) = start(Kind::Native, true);
    let url = format!("tls://{tls}");
    let pin = Fingerprint::of(&test_cert().der);
    assert_eq!(
        Fingerprint::of_pem_file(&test_cert().pem_path).unwrap(),
        pin
    );
    let mut c = connect(&url, &TransportOptions::new().with_pin(pin)).unwrap();
    exercise(&mut c, 3);
    let wrong = Fingerprint([0xab; 32]);
    let e = connect(&url, &TransportOptions::new().with_pin(wrong)).unwrap_err();
    assert!(
        matches!(e, ConnectionError::Tls(TlsError::Handshake(_))),
        "{e}"
    );
    // The system's CAs do not know the test certificate (or there are none here).
    let e = connect(&url, &TransportOptions::new()).unwrap_err();
    assert!(matches!(e, ConnectionError::Tls(_)), "{e}");
    // The name checked is the rung's host, or its sni= override.
    let port = tls.rsplit(':').next().unwrap();
    connect(&format!("tls://localhost:{port}"), &trust_test_ca()).unwrap();
    connect(&format!("tls://{tls}?sni=localhost"), &trust_test_ca()).unwrap();
    let e = connect(&format!("tls://{tls}?sni=other.example"), &trust_test_ca()).unwrap_err();
    assert!(matches!(e, ConnectionError::Tls(_)), "{e}");
}

#[test]
fn refusals_come_back_as_the_servers_error() {
    let (native, _) = start(Kind::Native, false);
    let (ws, _) = start(Kind::Ws, false);
    let (http, _) = start(Kind::Tunnel, false);
    for url in [
        format!("tern://{native}"),
        format!("ws://{ws}"),
        format!("http://{http}"),
        format!("http://{http}?mode=poll"),
    ] {
        let e = Connection::connect_rung(
            &Rung::parse(&url).unwrap(),
            &TransportOptions::new(),
            &hello("bad"),
            WAIT,
        )
        .unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::AUTH_INVALID), "{url}: {e}");
    }
}

#[test]
fn tunnel_falls_back_to_polls_behind_a_buffering_proxy() {
    let (http, server) = start_with(
        Kind::Tunnel,
        false,
        TunnelState {
            buffering: true,
            ..TunnelState::default()
        },
    );
    let started = Instant::now();
    let mut conn = connect(&format!("http://{http}"), &TransportOptions::new()).unwrap();
    assert!(started.elapsed() < WAIT);
    exercise(&mut conn, 20);
    let log = tunnel_log(&server);
    assert_eq!(log[0], "POST /tern/open?mode=stream");
    assert_eq!(log[1], format!("POST /tern/close?s={:048x}", 1));
    assert_eq!(log[2], "POST /tern/open?mode=poll");
    assert!(log.iter().any(|l| l.starts_with("GET /tern/poll?s=")));
    // An explicit stream mode does not fall back.
    let e = Connection::connect_rung(
        &Rung::parse(&format!("http://{http}?mode=stream")).unwrap(),
        &TransportOptions::new(),
        &hello("alice"),
        Duration::from_millis(800),
    )
    .unwrap_err();
    assert!(matches!(e, ConnectionError::Timeout), "{e}");
}

#[test]
fn tunnel_moves_to_polls_when_its_stream_goes_silent() {
    let (http, server) = start_with(
        Kind::Tunnel,
        false,
        TunnelState {
            stall_after_open: true,
            heartbeat_secs: 1,
            ..TunnelState::default()
        },
    );
    let mut conn = connect(&format!("http://{http}"), &TransportOptions::new()).unwrap();
    let started = Instant::now();
    // The PONGs are held back until the client notices (heartbeat + margin) and polls.
    exercise(&mut conn, 3);
    assert!(started.elapsed() >= Duration::from_secs(2));
    let log = tunnel_log(&server);
    assert_eq!(log[0], "POST /tern/open?mode=stream");
    assert!(
        log.iter().any(|l| l.starts_with("GET /tern/poll?s=")),
        "{log:?}"
    );
    // Explicit stream mode stays on the stream.
    let mut conn = connect(
        &format!("http://{http}?mode=stream"),
        &TransportOptions::new(),
    )
    .unwrap();
    conn.send(&Frame::new(5, Body::Ping(Ping { time: 5 })))
        .unwrap();
    assert!(conn.recv(Duration::from_secs(4)).unwrap().is_none());
}

#[test]
fn tunnel_reattaches_a_downstream_that_a_proxy_cuts() {
    let (http, server) = start_with(
        Kind::Tunnel,
        false,
        TunnelState {
            cut_downstreams: true,
            ..TunnelState::default()
        },
    );
    let mut conn = connect(
        &format!("http://{http}?mode=stream"),
        &TransportOptions::new(),
    )
    .unwrap();
    for _ in 0..5 {
        exercise(&mut conn, 3);
    }
    let downs = tunnel_log(&server)
        .iter()
        .filter(|l| l.starts_with("GET /tern/down?s="))
        .count();
    assert!(downs >= 5, "{:?}", tunnel_log(&server));
}

#[test]
fn tunnel_up_requests_count_from_zero_and_retry_a_lost_answer() {
    let (http, server) = start_with(
        Kind::Tunnel,
        false,
        TunnelState {
            drop_first_up_answer: true,
            ..TunnelState::default()
        },
    );
    let mut conn = connect(&format!("http://{http}"), &TransportOptions::new()).unwrap();
    // The first up (n=0) is applied but its answer lost: the retry of n=0 must not apply it
    // again (exercise checks that every PING gets exactly one PONG).
    exercise(&mut conn, 10);
    let ns: Vec<u64> = tunnel_log(&server)
        .iter()
        .filter_map(|l| l.split("&n=").nth(1)?.parse().ok())
        .collect();
    assert_eq!(ns[..2], [0, 0], "{ns:?}");
    for w in ns[1..].windows(2) {
        assert_eq!(w[1], w[0] + 1, "one request at a time, in order: {ns:?}");
    }
}

#[test]
fn tunnel_up_bodies_stay_within_a_mebibyte() {
    let (http, server) = start(Kind::Tunnel, false);
    let mut conn = connect(&format!("http://{http}"), &TransportOptions::new()).unwrap();
    // Large frames written back to back: coalesced, but never past 1 MiB per request.
    for i in 0..6u8 {
        let send = Body::Send(tern_protocol::Send {
            to: tern_protocol::Conv::direct("bob"),
            msg_id: tern_protocol::MsgId([i; 16]),
            kind: tern_protocol::MessageKind::FILE,
            body: vec![i; 600_000].into(),
        });
        conn.send(&Frame::new(100 + u32::from(i), send)).unwrap();
    }
    exercise(&mut conn, 3);
    let ups = tunnel_log(&server)
        .iter()
        .filter(|l| l.starts_with("POST /tern/up"))
        .count();
    assert!(
        ups >= 6,
        "{ups} up requests for 6 frames of 600 kB and 4 PINGs"
    );
}

#[test]
fn tunnel_shutdown_posts_close() {
    let (http, server) = start(Kind::Tunnel, false);
    let mut conn = connect(&format!("http://{http}"), &TransportOptions::new()).unwrap();
    exercise(&mut conn, 1);
    let sid = conn.tunnel_session().unwrap();
    assert_eq!(sid.len(), 48);
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
    let log = tunnel_log(&server);
    assert!(
        log.contains(&format!("POST /tern/close?s={sid}")),
        "{log:?}"
    );
    assert!(server.tunnel.lock().unwrap().sessions[&sid].ended);
}

#[test]
fn proxies_get_absolute_uris_for_http_and_connect_for_the_rest() {
    // Plain tunnel: requests go to the proxy with absolute URIs (the fake tunnel server plays
    // the proxy and the node at once).
    let (http, server) = start(Kind::Tunnel, false);
    let options = TransportOptions::new().with_proxy(http.clone());
    let mut conn = connect("http://node.invalid:8080", &options)
        .unwrap_or_else(|e| panic!("through the proxy: {e}"));
    exercise(&mut conn, 5);
    let log = tunnel_log(&server);
    assert!(!log.is_empty());
    assert!(log.iter().all(|l| l.starts_with("abs ")), "{log:?}");

    // Everything else: CONNECT, then the transport inside.
    let (proxy, targets) = start_connect_proxy();
    let (native, _) = start(Kind::Native, false);
    let (tls, _) = start(Kind::Native, true);
    let (wss, _) = start(Kind::Ws, true);
    let (https, _) = start(Kind::Tunnel, true);
    let options = trust_test_ca().with_proxy(proxy);
    for url in [
        format!("tern://{native}"),
        format!("tls://{tls}"),
        format!("wss://{wss}"),
        format!("https://{https}"),
    ] {
        let mut conn = connect(&url, &options).unwrap_or_else(|e| panic!("{url}: {e}"));
        exercise(&mut conn, 5);
        conn.shutdown();
    }
    let targets = targets.lock().unwrap();
    for addr in [&native, &tls, &wss, &https] {
        assert!(targets.contains(addr), "{targets:?} lacks {addr}");
    }
}

#[test]
fn every_transport_gives_up_on_a_hanging_listener_within_its_timeout() {
    let (addr, _keep) = hanging_listener();
    for url in [
        format!("tern://{addr}"),
        format!("tls://{addr}"),
        format!("ws://{addr}"),
        format!("wss://{addr}"),
        format!("http://{addr}"),
        format!("https://{addr}"),
        format!("http://{addr}?mode=poll"),
    ] {
        let started = Instant::now();
        let e = Connection::connect_rung(
            &Rung::parse(&url).unwrap(),
            &trust_test_ca(),
            &hello("alice"),
            Duration::from_millis(300),
        )
        .unwrap_err();
        let took = started.elapsed();
        assert!(matches!(e, ConnectionError::Timeout), "{url}: {e}");
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_millis(1500),
            "{url}: {took:?}"
        );
    }
}

#[test]
fn ladder_walks_past_refusing_and_hanging_rungs_and_remembers() {
    let refused = refusing_addr();
    let (hanging, _keep) = hanging_listener();
    let (good, good_server) = start(Kind::Native, false);
    let mut ladder = Endpoints::parse(&format!(
        "tern://{refused},tls://{hanging}?timeout=0.3,ws://{hanging}?timeout=0.3,{good}"
    ))
    .unwrap()
    .with_options(trust_test_ca())
    .with_rung_timeout(WAIT);
    assert_eq!(ladder.attempt_order(), [0, 1, 2, 3]);
    let started = Instant::now();
    let mut conn = ladder.connect(&hello("alice")).unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(550) && took < Duration::from_secs(2),
        "two hanging rungs of 0.3 s: {took:?}"
    );
    assert_eq!(conn.rung().to_string(), format!("tern://{good}"));
    exercise(&mut conn, 2);
    assert_eq!(ladder.attempt_order(), [3, 0, 1, 2]);
    assert_eq!(
        ladder.remembered().unwrap().to_string(),
        format!("tern://{good}")
    );

    // The next walk starts with the rung that worked: no time lost on the others.
    let started = Instant::now();
    ladder.connect(&hello("alice")).unwrap();
    assert!(started.elapsed() < Duration::from_millis(300));
    assert_eq!(good_server.accepted.load(Ordering::SeqCst), 2);
}

#[test]
fn ladder_reports_every_failure_and_stops_at_an_auth_refusal() {
    let refused = refusing_addr();
    let (hanging, _keep) = hanging_listener();
    let mut ladder = Endpoints::parse(&format!("{refused},http://{hanging}"))
        .unwrap()
        .with_rung_timeout(Duration::from_millis(200));
    let e = ladder.connect(&hello("alice")).unwrap_err();
    let ConnectionError::AllRungsFailed(failures) = &e else {
        panic!("{e}");
    };
    assert_eq!(failures.len(), 2);
    assert!(matches!(failures[0].error, ConnectionError::Io(_)));
    assert!(matches!(failures[1].error, ConnectionError::Timeout));
    assert!(e.to_string().contains(&refused), "{e}");
    assert!(ladder.remembered().is_none());

    // A refused token ends the walk: the next rung is not even contacted.
    let (first, _) = start(Kind::Native, false);
    let (second, second_server) = start(Kind::Native, false);
    let mut ladder = Endpoints::parse(&format!("{first},{second}")).unwrap();
    let e = ladder.connect(&hello("bad")).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::AUTH_INVALID));
    assert_eq!(second_server.accepted.load(Ordering::SeqCst), 0);
}

#[test]
fn client_keeps_the_rung_that_worked_in_its_state_file() {
    let (hanging, _keep) = hanging_listener();
    let (good, _) = start(Kind::Tunnel, false);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let ladder = || {
        Endpoints::parse(&format!("tern://{hanging}?timeout=1,http://{good}"))
            .unwrap()
            .with_rung_timeout(WAIT)
    };
    let connected = |client: &Client| loop {
        match client.next_event(WAIT) {
            Some(Event::Connected { via, .. }) => return via,
            Some(Event::Disconnected { .. } | Event::Synced { .. }) => {}
            other => panic!("{other:?}"),
        }
    };
    let mut cfg = ClientConfig::new("", "alice", "phone").with_endpoints(ladder());
    cfg.state_path = Some(state.clone());
    let started = Instant::now();
    let client = Client::start(cfg.clone());
    assert_eq!(connected(&client), format!("http://{good}"));
    assert!(started.elapsed() >= Duration::from_secs(1));
    client.stop();
    assert_eq!(
        DeviceState::load(&state).unwrap().rung,
        Some(format!("http://{good}"))
    );

    // A new client (a restarted app) starts with the remembered rung.
    let started = Instant::now();
    let client = Client::start(cfg);
    assert_eq!(connected(&client), format!("http://{good}"));
    assert!(started.elapsed() < Duration::from_millis(900));
    client.stop();
}

#[test]
fn bad_addresses_and_pins_are_errors_not_panics() {
    assert!(matches!(
        Connection::connect("ftp://x:1", &hello("a"), WAIT),
        Err(ConnectionError::Endpoint(_))
    ));
    let client = Client::start(ClientConfig::new("tls://:1", "a", "d"));
    match client.next_event(WAIT) {
        Some(Event::Fatal { code, .. }) => assert_eq!(code, ErrorCode::INVALID_ARGUMENT),
        other => panic!("{other:?}"),
    }
    assert!(Fingerprint::parse("12:34").is_err());
}
