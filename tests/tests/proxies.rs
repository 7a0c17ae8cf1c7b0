//! Real proxies in front of a node (issue 7, SPEC §12), run from the distribution's packages as
//! foreground processes on free loopback ports with their files in a temporary directory:
//!
//! - squid as an HTTP forward proxy carrying the HTTP tunnel (streamed, polled, auto);
//! - nginx as a reverse proxy: the tunnel and WebSocket, nginx terminating TLS, the node mounted
//!   under a path, and a server with response buffering forced on whatever the node asks;
//! - load balancers sending PROXY protocol headers — nginx's stream module (v1) and haproxy (v2,
//!   also in front of the TLS listener, and its health checks' LOCAL headers) — to a node that
//!   trusts them, which must then see the client's address instead of the balancer's; and PROXY
//!   headers from untrusted sources, which must close the connection without a session.
//!
//! Every test skips with a message on stderr when its proxy is not installed (`.ci/deps` installs
//! them on Debian and Ubuntu). The proxies connect to the node from 127.0.0.9 and the clients
//! from 127.0.0.1, so the addresses the node logs tell the two apart.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tern_protocol::{decode, Body, Capabilities, Frame, Hello, MsgId, DEFAULT_MAX_BODY, PROTOCOL};
use tern_tests::{expect_push, find_program, free_port, log_field, send_text, Daemon, Node, WAIT};
use tern_tools::{Connection, Rung, TransportOptions};

/// The address the proxies connect to the node from (`proxy_bind`, haproxy's `source`): the one
/// the node trusts, distinct from the clients' 127.0.0.1.
const PROXY_SOURCE: &str = "127.0.0.9";
/// How long a proxy may take to start listening.
const START: Duration = Duration::from_secs(15);
/// The node's log filter for the tests that read its log: `connection open` (with `peer=`), `session open` and the
/// PROXY decisions are debug lines of the engine.
const DEBUG_LOG: &str = "warn,tern_engine=debug";

// ---------------------------------------------------------------------------------------------
// Helpers

/// The installed program, or `None` after saying on stderr that `test` is skipped and how to get
/// the program.
fn installed(program: &str, package: &str, test: &str) -> Option<PathBuf> {
    let found = find_program(program);
    if found.is_none() {
        eprintln!(
            "{program} not installed: skipping {test} \
             (Debian/Ubuntu: apt-get install {package}, or run .ci/deps)"
        );
    }
    found
}

/// Whether the proxies can connect from [`PROXY_SOURCE`] (all of 127.0.0.0/8 is local on Linux,
/// not everywhere); says on stderr that `test` is skipped when not.
fn proxy_source_usable(test: &str) -> bool {
    match std::net::TcpListener::bind((PROXY_SOURCE, 0)) {
        Ok(_) => true,
        Err(e) => {
            eprintln!("{PROXY_SOURCE} is not a local address here ({e}): skipping {test}");
            false
        }
    }
}

/// A scratch directory for a proxy's configuration, pid file, logs and temporary files. Squid
/// started as root runs as its own unprivileged user, which must be able to write there.
fn scratch() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// The node's dev certificate and key (`ternd --dev` writes them).
fn dev_cert(node: &Node) -> (PathBuf, PathBuf) {
    let tls = node.data_dir().join("tls");
    (tls.join("cert.pem"), tls.join("key.pem"))
}

fn msg_id(tag: u64) -> MsgId {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&0x7072_6f78_6965_7321u64.to_be_bytes());
    id[8..].copy_from_slice(&tag.to_be_bytes());
    MsgId(id)
}

/// `far` (through a proxy) and `near` (native) are two devices of the same user: a message sent
/// by each reaches the other.
fn exchange(near: &mut Connection, far: &mut Connection, tag: u64, label: &str) {
    let out = format!("{label}: from the far device");
    send_text(far, "bob", msg_id(2 * tag), &out);
    expect_push(near, msg_id(2 * tag), &out);
    let back = format!("{label}: from the native device");
    send_text(near, "bob", msg_id(2 * tag + 1), &back);
    expect_push(far, msg_id(2 * tag + 1), &back);
}

/// Waits (at most `WAIT`) until the file holds a line `pred` accepts; panics with its text.
fn wait_line(path: &Path, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| pred(l)) {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "{what}: no such line in {path:?} within {WAIT:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The node's `session open` line for `device`.
fn session_line(node: &Node, device: &str) -> String {
    node.wait_log_line(WAIT, |l| {
        l.contains("session open") && log_field(l, "device") == Some(device)
    })
    .unwrap_or_else(|| {
        panic!(
            "no `session open` for {device} in the node's log:\n{}",
            node.log_text()
        )
    })
}

/// The peer address the node logged for `device`'s connection (`connection open`, matched to
/// the `session open` line by its session id).
fn session_peer(node: &Node, device: &str) -> SocketAddr {
    let line = session_line(node, device);
    let session = log_field(&line, "session")
        .unwrap_or_else(|| panic!("no session id in {line:?}"))
        .to_owned();
    let open = node
        .wait_log_line(WAIT, |l| {
            l.contains("connection open") && log_field(l, "session") == Some(session.as_str())
        })
        .unwrap_or_else(|| panic!("no `connection open` for session {session}"));
    log_field(&open, "peer")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no peer address in {open:?}"))
}

fn hello_bytes(token: &str, device: &str) -> Vec<u8> {
    Frame::new(
        1,
        Body::Hello(Hello {
            protocol: PROTOCOL,
            capabilities: Capabilities::ALL,
            max_frame: DEFAULT_MAX_BODY,
            token: token.into(),
            device: device.into(),
            resume_inbox_seq: 0,
            client: "proxies-test".into(),
        }),
    )
    .to_bytes()
    .unwrap()
}

/// Connects a plain TCP socket to `addr`, sends `prefix` then a HELLO for `device`, and returns
/// the socket's own address (the client address the node should log) and the first frame the
/// node answers.
fn raw_hello(addr: &str, prefix: &[u8], token: &str, device: &str) -> (SocketAddr, Frame<'static>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let local = s.local_addr().unwrap();
    let mut out = prefix.to_vec();
    out.extend_from_slice(&hello_bytes(token, device));
    s.write_all(&out).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((f, _)) = decode(&buf, DEFAULT_MAX_BODY).unwrap() {
            return (local, f.into_owned());
        }
        match s.read(&mut chunk) {
            Ok(0) => panic!("{addr} closed the connection before answering HELLO"),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("no answer to HELLO from {addr}: {e}"),
        }
    }
}

/// Sends `bytes` on a fresh connection and returns what came back before the node closed it;
/// panics if it stays open for `WAIT`.
fn read_until_closed(addr: &str, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            // A reset is a close too (the node may close with unread bytes in its buffer).
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return out,
            Err(e) => panic!("{addr} kept the connection open ({e}); got {out:?}"),
        }
    }
}

/// A counter of the node's `/metrics`.
fn metric(node: &Node, name: &str) -> u64 {
    let (status, body) = node.admin_get("/metrics");
    assert!(status.contains("200"), "/metrics: {status}");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
}

/// A PROXY v1 header claiming the connection comes from `client`.
fn proxy_v1(client: &str, server: SocketAddr) -> Vec<u8> {
    let client: SocketAddr = client.parse().unwrap();
    format!(
        "PROXY TCP4 {} {} {} {}\r\n",
        client.ip(),
        server.ip(),
        client.port(),
        server.port()
    )
    .into_bytes()
}

/// A PROXY v2 header (PROXY command, TCP over IPv4) claiming the connection comes from `client`.
fn proxy_v2(client: SocketAddrV4, server: SocketAddrV4) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21); // version 2, PROXY
    h.push(0x11); // AF_INET, STREAM
    h.extend_from_slice(&12u16.to_be_bytes());
    h.extend_from_slice(&client.ip().octets());
    h.extend_from_slice(&server.ip().octets());
    h.extend_from_slice(&client.port().to_be_bytes());
    h.extend_from_slice(&server.port().to_be_bytes());
    h
}

/// Checks that a PROXY header sent straight from 127.0.0.1 (not a trusted source of `node`)
/// closes the connection without an answer and without a session.
fn untrusted_header_is_refused(node: &Node, header: &[u8], device: &str) {
    let token = node.token("mallory", Some(device), 3600);
    let mut bytes = header.to_vec();
    bytes.extend_from_slice(&hello_bytes(&token, device));
    let answer = read_until_closed(&node.native, &bytes);
    assert!(
        answer.is_empty(),
        "a PROXY header from an untrusted source got an answer: {answer:?}"
    );
    assert!(
        node.wait_log_line(WAIT, |l| l
            .contains("PROXY header from an untrusted source"))
            .is_some(),
        "the node did not log the refusal:\n{}",
        node.log_text()
    );
    assert!(
        !node
            .log_text()
            .lines()
            .any(|l| l.contains("session open") && log_field(l, "device") == Some(device)),
        "a session opened behind an untrusted PROXY header:\n{}",
        node.log_text()
    );
}

/// Checks a trusted load balancer at `front` (in front of the node's native listener): a raw
/// HELLO through it opens a session whose peer is the client socket's own address, the
/// balancer's header came from `PROXY_SOURCE`, and messages cross between a device behind it and
/// a native one.
fn check_balancer(node: &Node, front: &str, label: &str) {
    let device = format!("{label}-raw");
    let token = node.token("alice", Some(&device), 3600);
    let (local, answer) = raw_hello(front, &[], &token, &device);
    assert!(
        matches!(answer.body, Body::Welcome(_)),
        "{label}: expected WELCOME, got {answer:?}"
    );
    let peer = session_peer(node, &device);
    assert_eq!(
        peer, local,
        "{label}: the node must log the client's address, not the balancer's"
    );
    let header = node
        .wait_log_line(WAIT, |l| {
            l.contains("PROXY header") && log_field(l, "client") == Some(&local.to_string())
        })
        .unwrap_or_else(|| panic!("{label}: no PROXY header logged:\n{}", node.log_text()));
    let from: SocketAddr = log_field(&header, "proxy").unwrap().parse().unwrap();
    assert_eq!(
        from.ip().to_string(),
        PROXY_SOURCE,
        "{label}: the header came from {from}, not from the balancer: {header}"
    );

    let mut near = node.connect("alice", &format!("{label}-desk"));
    let far_device = format!("{label}-sdk");
    let mut far = node.connect_via(
        &format!("tern://{front}"),
        &TransportOptions::new(),
        "alice",
        &far_device,
    );
    assert_eq!(
        session_peer(node, &far_device).ip().to_string(),
        "127.0.0.1",
        "{label}: the SDK's session must show the client's address"
    );
    exchange(&mut near, &mut far, 10, label);
}

// ---------------------------------------------------------------------------------------------
// squid: an HTTP forward proxy

#[test]
fn squid_forward_proxy_carries_the_http_tunnel() {
    let test = "squid_forward_proxy_carries_the_http_tunnel";
    let Some(squid) = installed("squid", "squid", test) else {
        return;
    };
    let started = Instant::now();
    let node = Node::start();
    let dir = scratch();
    let d = dir.path().display();
    let port = free_port("127.0.0.1");
    let access = dir.path().join("access.log");
    // No cache, no disk state; query strings kept in the access log so that each session's
    // requests can be found there. `localhost` is one of squid's built-in ACLs.
    let conf = format!(
        "http_port 127.0.0.1:{port}\n\
         visible_hostname tern-test\n\
         http_access allow localhost\n\
         http_access deny all\n\
         cache deny all\n\
         cache_mem 8 MB\n\
         pid_filename {d}/squid.pid\n\
         cache_log {d}/cache.log\n\
         access_log stdio:{d}/access.log\n\
         strip_query_terms off\n\
         coredump_dir {d}\n\
         netdb_filename none\n\
         shutdown_lifetime 0 seconds\n"
    );
    let conf_path = dir.path().join("squid.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let mut cmd = Command::new(squid);
    cmd.arg("-N").arg("-f").arg(&conf_path);
    let mut daemon = Daemon::spawn("squid", cmd, &dir.path().join("squid.out"));
    let proxy = format!("127.0.0.1:{port}");
    daemon.wait_listening(&proxy, START);
    let options = TransportOptions::new().with_proxy(proxy.clone());

    let mut near = node.connect("alice", "desk");
    for (tag, mode) in ["stream", "poll", "auto"].into_iter().enumerate() {
        let url = format!("http://{}?mode={mode}", node.http);
        let label = format!("squid {url}");
        let mut far = node.connect_via(&url, &options, "alice", &format!("squid-{mode}"));
        let sid = far.tunnel_session().unwrap();
        exchange(&mut near, &mut far, tag as u64, &label);
        far.shutdown();
        // Squid logs a request when it completes: the session's upstream went through it, and
        // its downstream was polled in poll mode only (a streamed response came through
        // unbuffered, or auto mode would have fallen back to polls).
        wait_line(&access, &label, |l| {
            l.contains(&format!("/tern/up?s={sid}"))
        });
        wait_line(&access, &label, |l| {
            l.contains(&format!("/tern/close?s={sid}"))
        });
        let polled = std::fs::read_to_string(&access)
            .unwrap()
            .contains(&format!("/tern/poll?s={sid}"));
        assert_eq!(polled, mode == "poll", "{label}: polls seen: {polled}");
    }
    drop(daemon);
    eprintln!("{test}: {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// nginx: a reverse proxy for the tunnel and WebSocket

/// The main-context lines every nginx configuration here starts with: foreground, one process,
/// every file in `dir`.
fn nginx_main(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\n\
         pid {d}/nginx.pid;\nerror_log {d}/error.log info;\n"
    )
}

fn start_nginx(nginx: &Path, dir: &Path, conf: &str, listening: &[u16]) -> Daemon {
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let mut cmd = Command::new(nginx);
    cmd.arg("-p").arg(dir).arg("-c").arg(&path);
    let mut daemon = Daemon::spawn("nginx", cmd, &dir.join("nginx.out"));
    for port in listening {
        daemon.wait_listening(&format!("127.0.0.1:{port}"), START);
    }
    daemon
}

#[test]
fn nginx_reverse_proxy_carries_the_tunnel_and_websocket() {
    let test = "nginx_reverse_proxy_carries_the_tunnel_and_websocket";
    let Some(nginx) = installed("nginx", "nginx", test) else {
        return;
    };
    let started = Instant::now();
    let node = Node::start();
    let dir = scratch();
    let d = dir.path().display();
    let (plain, tls, buffering) = (
        free_port("127.0.0.1"),
        free_port("127.0.0.1"),
        free_port("127.0.0.1"),
    );
    let (cert, key) = dev_cert(&node);
    let upstream = &node.http;
    // The first server is configured as deployed: nginx's default `proxy_buffering on` stays,
    // and the node's `X-Accel-Buffering: no` must turn it off for downstream responses (a
    // streamed tunnel would otherwise never see its first frame). It also terminates TLS with
    // the node's certificate, and mounts the node under /chat/ as well. The second server
    // buffers whatever the node says: there the client must fall back to polls.
    let conf = format!(
        "{main}events {{ worker_connections 256; }}\n\
         http {{\n\
           client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
           log_format tern '$server_port $request $status';\n\
           map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}\n\
           server {{\n\
             listen 127.0.0.1:{plain};\n\
             listen 127.0.0.1:{tls} ssl;\n\
             ssl_certificate {cert};\n\
             ssl_certificate_key {key};\n\
             access_log {d}/access.log tern;\n\
             location = /tern/ws {{\n\
               proxy_pass http://{upstream};\n\
               proxy_http_version 1.1;\n\
               proxy_set_header Upgrade $http_upgrade;\n\
               proxy_set_header Connection \"upgrade\";\n\
             }}\n\
             location /tern/ {{\n\
               proxy_pass http://{upstream};\n\
               proxy_http_version 1.1;\n\
               proxy_set_header Connection \"\";\n\
             }}\n\
             location /chat/ {{\n\
               proxy_pass http://{upstream}/;\n\
               proxy_http_version 1.1;\n\
               proxy_set_header Upgrade $http_upgrade;\n\
               proxy_set_header Connection $connection_upgrade;\n\
             }}\n\
           }}\n\
           server {{\n\
             listen 127.0.0.1:{buffering};\n\
             access_log {d}/buffering.log tern;\n\
             location /tern/ {{\n\
               proxy_pass http://{upstream};\n\
               proxy_http_version 1.1;\n\
               proxy_set_header Connection \"\";\n\
               proxy_buffering on;\n\
               proxy_ignore_headers X-Accel-Buffering;\n\
             }}\n\
           }}\n\
         }}\n",
        main = nginx_main(dir.path()),
        cert = cert.display(),
        key = key.display(),
    );
    let daemon = start_nginx(&nginx, dir.path(), &conf, &[plain, tls, buffering]);
    let access = dir.path().join("access.log");
    let trust = TransportOptions::new().with_ca_file(&cert);

    let mut near = node.connect("alice", "desk");
    let cases = [
        (format!("http://127.0.0.1:{plain}?mode=stream"), false),
        (format!("http://127.0.0.1:{plain}?mode=poll"), true),
        (format!("http://127.0.0.1:{plain}"), false),
        (format!("http://127.0.0.1:{plain}/chat?mode=stream"), false),
        (format!("https://127.0.0.1:{tls}?mode=stream"), false),
        (format!("ws://127.0.0.1:{plain}/tern/ws"), false),
        (format!("ws://127.0.0.1:{plain}/chat/tern/ws"), false),
        (format!("wss://127.0.0.1:{tls}/tern/ws"), false),
    ];
    for (tag, (url, polls)) in cases.iter().enumerate() {
        let label = format!("nginx {url}");
        let mut far = node.connect_via(url, &trust, "alice", &format!("nginx-{tag}"));
        exchange(&mut near, &mut far, tag as u64, &label);
        let sid = far.tunnel_session();
        far.shutdown();
        drop(far);
        // nginx logs a request when it completes, so these lines show that the connection went
        // through it.
        if let Some(sid) = sid {
            // The upstream went through nginx, and the downstream was polled only when asked
            // to (no fallback from a working stream).
            wait_line(&access, &label, |l| {
                l.contains(&format!("/tern/up?s={sid}"))
            });
            wait_line(&access, &label, |l| {
                l.contains(&format!("/tern/close?s={sid}"))
            });
            let polled = std::fs::read_to_string(&access)
                .unwrap()
                .contains(&format!("/tern/poll?s={sid}"));
            assert_eq!(polled, *polls, "{label}: polls seen: {polled}");
        } else {
            // The upgrade was answered by the node through nginx.
            let rung = Rung::parse(url).unwrap();
            let upgraded = format!("{} GET {} HTTP/1.1 101", rung.port, rung.path);
            wait_line(&access, &label, |l| l == upgraded);
        }
    }

    // With buffering forced on, nginx still forwards what it has read from the node at once (it
    // buffers to run ahead of a slow client, not to hold a response back), so the stream works
    // there too; were it held back, auto mode would fall back to polls. Either way the session
    // must work; which way it went is reported.
    let url = format!("http://127.0.0.1:{buffering}");
    let label = format!("buffering nginx {url}");
    let mut far = node.connect_via(&url, &trust, "alice", "nginx-buffered");
    exchange(&mut near, &mut far, 100, &label);
    let sid = far.tunnel_session().unwrap();
    far.shutdown();
    drop(far);
    let log = dir.path().join("buffering.log");
    wait_line(&log, &label, |l| {
        l.contains(&format!("/tern/close?s={sid}"))
    });
    let polled = std::fs::read_to_string(&log)
        .unwrap()
        .contains(&format!("/tern/poll?s={sid}"));
    eprintln!(
        "{label}: downstream {}",
        if polled { "polled" } else { "streamed" }
    );
    drop(daemon);
    eprintln!("{test}: {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// PROXY protocol from load balancers

/// The `load_module` line nginx needs for its stream module: empty when the module is built
/// in, `None` when there is none.
fn nginx_stream_module(nginx: &Path) -> Option<String> {
    let out = Command::new(nginx).arg("-V").output().ok()?;
    // nginx prints its configure arguments on stderr.
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    let args: Vec<&str> = text.split_whitespace().collect();
    if args.contains(&"--with-stream") {
        return Some(String::new());
    }
    let configured = args
        .iter()
        .find_map(|a| a.strip_prefix("--modules-path="))
        .map(PathBuf::from);
    configured
        .into_iter()
        .chain(
            ["/usr/lib/nginx/modules", "/usr/lib64/nginx/modules"]
                .into_iter()
                .map(PathBuf::from),
        )
        .map(|d| d.join("ngx_stream_module.so"))
        .find(|p| p.is_file())
        .map(|p| format!("load_module {};\n", p.display()))
}

#[test]
fn nginx_stream_sends_proxy_protocol_v1() {
    let test = "nginx_stream_sends_proxy_protocol_v1";
    let Some(nginx) = installed("nginx", "nginx libnginx-mod-stream", test) else {
        return;
    };
    let Some(load_module) = nginx_stream_module(&nginx) else {
        eprintln!(
            "nginx has no stream module: skipping {test} \
             (Debian/Ubuntu: apt-get install libnginx-mod-stream, or run .ci/deps)"
        );
        return;
    };
    if !proxy_source_usable(test) {
        return;
    }
    let started = Instant::now();
    let node = Node::start_logged(&["--proxy-trusted", PROXY_SOURCE], DEBUG_LOG);
    let dir = scratch();
    let port = free_port("127.0.0.1");
    let conf = format!(
        "{load_module}{main}events {{ worker_connections 256; }}\n\
         stream {{\n\
           server {{\n\
             listen 127.0.0.1:{port};\n\
             proxy_pass {upstream};\n\
             proxy_protocol on;\n\
             proxy_bind {PROXY_SOURCE};\n\
             proxy_connect_timeout 5s;\n\
           }}\n\
         }}\n",
        main = nginx_main(dir.path()),
        upstream = node.native,
    );
    let daemon = start_nginx(&nginx, dir.path(), &conf, &[port]);
    check_balancer(&node, &format!("127.0.0.1:{port}"), "nginx-v1");
    // The node trusts the balancer's address only: the same header sent from 127.0.0.1 is
    // refused.
    let native: SocketAddr = node.native.parse().unwrap();
    untrusted_header_is_refused(&node, &proxy_v1("203.0.113.7:4000", native), "direct-v1");
    drop(daemon);
    eprintln!("{test}: {:?}", started.elapsed());
}

#[test]
fn haproxy_sends_proxy_protocol_v2() {
    let test = "haproxy_sends_proxy_protocol_v2";
    let Some(haproxy) = installed("haproxy", "haproxy", test) else {
        return;
    };
    if !proxy_source_usable(test) {
        return;
    }
    let started = Instant::now();
    let node = Node::start_logged(&["--proxy-trusted", PROXY_SOURCE], DEBUG_LOG);
    let dir = scratch();
    let (native_port, tls_port) = (free_port("127.0.0.1"), free_port("127.0.0.1"));
    // TCP mode in front of the native listener, and TLS passed through to the TLS listener (the
    // PROXY header goes before the ClientHello). The native backend is health-checked: haproxy
    // opens a connection, sends a v2 header with the LOCAL command and closes.
    let conf = format!(
        "global\n  maxconn 256\n\
         defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
         frontend native\n  bind 127.0.0.1:{native_port}\n  default_backend node_native\n\
         backend node_native\n  server node {native} send-proxy-v2 source {PROXY_SOURCE} check inter 100ms\n\
         frontend tls\n  bind 127.0.0.1:{tls_port}\n  default_backend node_tls\n\
         backend node_tls\n  server node {tls} send-proxy-v2 source {PROXY_SOURCE}\n",
        native = node.native,
        tls = node.tls,
    );
    let conf_path = dir.path().join("haproxy.cfg");
    std::fs::write(&conf_path, conf).unwrap();
    let mut cmd = Command::new(haproxy);
    cmd.arg("-db").arg("-f").arg(&conf_path);
    let mut daemon = Daemon::spawn("haproxy", cmd, &dir.path().join("haproxy.out"));
    daemon.wait_listening(&format!("127.0.0.1:{native_port}"), START);
    daemon.wait_listening(&format!("127.0.0.1:{tls_port}"), START);

    check_balancer(&node, &format!("127.0.0.1:{native_port}"), "haproxy-v2");

    // TLS through the balancer: the address in the header stands for the client there too.
    let (cert, _) = dev_cert(&node);
    let mut near = node.connect("alice", "tls-desk");
    let mut far = node.connect_via(
        &format!("tls://127.0.0.1:{tls_port}"),
        &TransportOptions::new().with_ca_file(cert),
        "alice",
        "haproxy-tls",
    );
    assert_eq!(
        session_peer(&node, "haproxy-tls").ip().to_string(),
        "127.0.0.1",
        "TLS behind haproxy: the session must show the client's address"
    );
    exchange(&mut near, &mut far, 20, "haproxy tls");

    // Three headers came with sessions; the health checks' LOCAL headers are accepted too (more
    // headers, none refused) without disturbing anything.
    let deadline = Instant::now() + WAIT;
    while metric(&node, "tern_proxy_headers_total") < 3 + 5 {
        assert!(
            Instant::now() < deadline,
            "haproxy's health checks did not reach the node:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        metric(&node, "tern_refused_total"),
        0,
        "{}",
        node.log_text()
    );
    exchange(&mut near, &mut far, 21, "haproxy tls after health checks");

    let native: SocketAddr = node.native.parse().unwrap();
    let SocketAddr::V4(native) = native else {
        panic!("the node listens on {native}")
    };
    untrusted_header_is_refused(
        &node,
        &proxy_v2("203.0.113.7:4000".parse().unwrap(), native),
        "direct-v2",
    );
    drop(daemon);
    eprintln!("{test}: {:?}", started.elapsed());
}

#[test]
fn proxy_headers_from_untrusted_sources_close_the_connection() {
    let started = Instant::now();
    // No --proxy-trusted: no source may send a PROXY header.
    let node = Node::start_logged(&[], DEBUG_LOG);
    let native: SocketAddr = node.native.parse().unwrap();
    untrusted_header_is_refused(&node, &proxy_v1("203.0.113.7:4000", native), "untrusted-v1");
    let SocketAddr::V4(native4) = native else {
        panic!("the node listens on {native}")
    };
    untrusted_header_is_refused(
        &node,
        &proxy_v2("203.0.113.7:4000".parse().unwrap(), native4),
        "untrusted-v2",
    );
    // The same on the HTTP listener, which detects PROXY headers too.
    let http: SocketAddr = node.http.parse().unwrap();
    let mut request = proxy_v1("203.0.113.7:4000", http);
    request.extend_from_slice(b"GET /tern/ws HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(read_until_closed(&node.http, &request).is_empty());
    // And the node still serves a plain client afterwards, with its real address.
    let token = node.token("alice", Some("plain"), 3600);
    let (local, answer) = raw_hello(&node.native, &[], &token, "plain");
    assert!(matches!(answer.body, Body::Welcome(_)), "{answer:?}");
    assert_eq!(session_peer(&node, "plain"), local);
    eprintln!(
        "proxy_headers_from_untrusted_sources_close_the_connection: {:?}",
        started.elapsed()
    );
}

/// Opens a tunnel session with a raw HTTP request carrying `X-Forwarded-For`; the answer's status.
fn tunnel_open_forwarded(node: &Node, forwarded: &str, token: &str, device: &str) -> String {
    let hello = hello_bytes(token, device);
    let mut req = format!(
        "POST /tern/open?mode=poll HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {forwarded}\r\nContent-Length: {}\r\n\r\n",
        hello.len()
    )
    .into_bytes();
    req.extend_from_slice(&hello);
    let mut s = TcpStream::connect(&node.http).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(&req).unwrap();
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn x_forwarded_for_names_the_client_only_from_trusted_sources() {
    // The test client is 127.0.0.1: trusted here, so the header's last address counts.
    let trusted = Node::start_logged(&["--proxy-trusted", "127.0.0.1"], DEBUG_LOG);
    let token = trusted.token("alice", None, 300);
    let status = tunnel_open_forwarded(&trusted, "10.9.9.9, 198.51.100.7", &token, "xff");
    assert!(status.contains("200"), "{status}");
    assert_eq!(
        session_peer(&trusted, "xff").ip().to_string(),
        "198.51.100.7"
    );
    // Untrusted: the header is the client's own claim and is ignored.
    let plain = Node::start_logged(&[], DEBUG_LOG);
    let token = plain.token("alice", None, 300);
    let status = tunnel_open_forwarded(&plain, "198.51.100.7", &token, "xff");
    assert!(status.contains("200"), "{status}");
    assert_eq!(session_peer(&plain, "xff").ip().to_string(), "127.0.0.1");
}
