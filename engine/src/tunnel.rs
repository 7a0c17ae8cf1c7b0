//! HTTP on the node's listeners (SPEC §12): the WebSocket upgrade, and the HTTP tunnel — open
//! (HELLO in, WELCOME and a session id out), `up` bodies, the `down` stream and `poll`, `close`.
//!
//! A tunnel session is a connection like any other, living on the core that served its `open`
//! ([`crate::link::TunnelShared`]). Its later requests may land on any core (SO_REUSEPORT);
//! they reach the session through its core's queue with a one-shot reply channel, so every
//! piece of session state stays on one core.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use tern_protocol::{decode, FrameType, HEADER_LEN};
use tracing::debug;

use crate::front::Opened;
use crate::link::{Down, Link, TunnelShared, Wire};
use crate::metrics::{inc, METRICS};
use crate::server::{run_conn, ConnShared, Core, CoreMsg};
use crate::transport::http::{self, Head, RequestHead, Route, Sid};
use crate::transport::ws::{self, WsLayer};

/// How long a `down` stream waits before checking on its client.
const STREAM_BEAT: Duration = Duration::from_secs(20);
/// How long an ended session keeps its last frames for a late poll.
const ENDED_GRACE: Duration = Duration::from_secs(10);
/// Keep-alive connections wait this long for their next request.
const KEEP_ALIVE: Duration = Duration::from_secs(60);
/// Frames waiting for a downstream before the session is a slow consumer.
const BACKLOG_LIMIT: usize = 4 << 20;
/// How long a refused open collects the frames that follow its ERROR (the CLOSE).
const REFUSAL_TAIL: Duration = Duration::from_millis(200);

/// How an HTTP connection ended.
#[derive(Debug)]
pub enum HttpEnd {
    /// Served and closed.
    Done,
    /// Upgraded: the connection now carries frames in WebSocket messages; `peer` is the client
    /// (from `X-Forwarded-For` when a trusted proxy sent the request).
    WebSocket {
        wire: Box<Wire>,
        initial: Vec<u8>,
        peer: SocketAddr,
    },
}

const X_TERN: (&str, &str) = ("Content-Type", "application/x-tern");
const TEXT: (&str, &str) = ("Content-Type", "text/plain");

/// Serves requests on one HTTP connection until it closes or upgrades.
pub async fn serve_http(
    core: Rc<Core>,
    mut wire: Wire,
    mut buf: Vec<u8>,
    peer: SocketAddr,
) -> HttpEnd {
    let handshake = Duration::from_millis(core.node.cfg.timers.handshake_ms);
    let max_body = (core.node.cfg.max_frame as usize + HEADER_LEN).max(1 << 20);
    let mut wait = handshake;
    loop {
        let head = loop {
            match http::parse_request(&buf) {
                Head::Done(h) => break h,
                Head::NeedMore => {
                    if !read_more(&core, &mut wire, &mut buf, wait).await {
                        wire.close(&core.pool).await;
                        return HttpEnd::Done;
                    }
                }
                Head::Invalid(why) => {
                    answer(&core, &mut wire, 400, &[TEXT], why.as_bytes(), true).await;
                    return HttpEnd::Done;
                }
            }
        };
        wait = KEEP_ALIVE;
        let peer = forwarded_for(&core, &head, peer);
        if head.is_websocket() {
            return upgrade(&core, wire, buf, &head, peer).await;
        }
        let body_len = match head.body_len() {
            Ok(n) if n <= max_body => n,
            Ok(_) => {
                answer(&core, &mut wire, 413, &[TEXT], b"body too large", true).await;
                return HttpEnd::Done;
            }
            Err(status) => {
                answer(
                    &core,
                    &mut wire,
                    status,
                    &[TEXT],
                    b"send Content-Length",
                    true,
                )
                .await;
                return HttpEnd::Done;
            }
        };
        while buf.len() < head.len + body_len {
            if !read_more(&core, &mut wire, &mut buf, handshake).await {
                wire.close(&core.pool).await;
                return HttpEnd::Done;
            }
        }
        let body = Bytes::copy_from_slice(&buf[head.len..head.len + body_len]);
        buf.drain(..head.len + body_len);
        let route = match http::route(&head) {
            // A routing part naming no core names no session: the same 403 as any other.
            Route::Up { sid, .. }
            | Route::Down { sid }
            | Route::Poll { sid, .. }
            | Route::Close { sid }
                if !core.has_core(sid.core) =>
            {
                Route::BadSession
            }
            r => r,
        };
        let keep = match route {
            Route::Open { poll } => open(&core, &mut wire, body, poll, peer).await,
            Route::Up { sid, n } => {
                let status = up(&core, sid, n, body).await;
                answer(&core, &mut wire, status, &[], b"", false).await
            }
            Route::Down { sid } => {
                if let Some(stream_ok) = check(&core, &mut wire, sid).await {
                    if stream_ok {
                        let head = http::stream_head(200, &down_headers(None));
                        if write(&core, &mut wire, head).await {
                            stream(&core, &mut wire, sid).await;
                        }
                    }
                }
                false
            }
            Route::Poll { sid, wait_secs } => {
                poll(&core, &mut wire, sid, Duration::from_secs(wait_secs)).await
            }
            Route::Close { sid } => {
                let status = close(&core, sid).await;
                answer(&core, &mut wire, status, &[], b"", false).await
            }
            Route::NoSession => {
                answer(
                    &core,
                    &mut wire,
                    401,
                    &[TEXT],
                    b"no tunnel session (s=)",
                    false,
                )
                .await
            }
            Route::BadSession => {
                answer(
                    &core,
                    &mut wire,
                    403,
                    &[TEXT],
                    b"no such tunnel session",
                    false,
                )
                .await
            }
            Route::NotFound => answer(&core, &mut wire, 404, &[TEXT], b"not found", false).await,
            Route::MethodNotAllowed => {
                answer(&core, &mut wire, 405, &[TEXT], b"method not allowed", false).await
            }
            Route::BadRequest(why) => {
                answer(&core, &mut wire, 400, &[TEXT], why.as_bytes(), false).await
            }
        };
        if !keep || head.wants_close() {
            wire.close(&core.pool).await;
            return HttpEnd::Done;
        }
    }
}

/// The client behind a trusted HTTP reverse proxy: the last address of `X-Forwarded-For` (the
/// one the proxy saw; earlier entries are the client's own claims). From any other source the
/// header is ignored, so a client cannot choose its own address.
fn forwarded_for(core: &Core, head: &RequestHead, peer: SocketAddr) -> SocketAddr {
    if !core
        .node
        .proxy_trusted
        .iter()
        .any(|c| c.contains(peer.ip()))
    {
        return peer;
    }
    head.headers
        .iter()
        .filter(|(n, _)| n == "x-forwarded-for")
        .flat_map(|(_, v)| v.split(','))
        .next_back()
        .and_then(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .map_or(peer, |ip| SocketAddr::new(ip, 0))
}

/// Reads more request bytes within `timeout`; `false` when the client is gone or slow.
async fn read_more(core: &Core, wire: &mut Wire, buf: &mut Vec<u8>, timeout: Duration) -> bool {
    matches!(
        monoio::time::timeout(timeout, wire.read_into(buf, &core.pool)).await,
        Ok(Ok(true))
    )
}

async fn write(core: &Core, wire: &mut Wire, bytes: Vec<u8>) -> bool {
    let (res, _) = wire.write_app(bytes, &core.pool).await;
    res.is_ok()
}

/// Writes a complete answer; `true` if the connection may serve another request.
async fn answer(
    core: &Core,
    wire: &mut Wire,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
    close: bool,
) -> bool {
    let ok = write(core, wire, http::response(status, headers, body, close)).await;
    if close {
        wire.close(&core.pool).await;
    }
    ok && !close
}

fn down_headers(sid: Option<&str>) -> Vec<(&str, &str)> {
    let mut h = vec![
        X_TERN,
        ("Cache-Control", "no-store"),
        ("X-Accel-Buffering", "no"),
    ];
    if let Some(s) = sid {
        h.push(("X-Tern-Session", s));
    }
    h
}

async fn upgrade(
    core: &Rc<Core>,
    mut wire: Wire,
    mut buf: Vec<u8>,
    head: &RequestHead,
    peer: SocketAddr,
) -> HttpEnd {
    let resp = match ws::accept(head) {
        Ok(r) => r,
        Err(why) => {
            answer(core, &mut wire, 400, &[TEXT], why.as_bytes(), true).await;
            return HttpEnd::Done;
        }
    };
    if !write(core, &mut wire, resp).await {
        return HttpEnd::Done;
    }
    let max = core.node.cfg.max_frame as usize + HEADER_LEN;
    wire.ws = Some(WsLayer::new(max.max(1 << 20)));
    let rest = buf.split_off(head.len);
    let mut initial = core.pool.take();
    match wire.absorb_plaintext(&rest, &mut initial, &core.pool).await {
        Ok(true) => HttpEnd::WebSocket {
            wire: Box::new(wire),
            initial,
            peer,
        },
        _ => HttpEnd::Done,
    }
}

/// Sends `msg` to the session's core; `false` if that core is not there or its queue is full.
fn send(core: &Core, sid: Sid, msg: CoreMsg) -> bool {
    core.send_to(sid.core, msg)
}

/// Waits for frames of session `sid` at most `wait`.
async fn poll_once(core: &Core, sid: Sid, wait: Duration) -> Down {
    let (tx, rx) = flume::bounded(1);
    let msg = CoreMsg::TunnelPoll {
        conn: sid.conn,
        secret: sid.secret,
        reply: tx.clone(),
    };
    if !send(core, sid, msg) {
        return Down::Unavailable;
    }
    let first = monoio::select! {
        r = rx.recv_async() => Some(r),
        _ = monoio::time::sleep(wait) => None,
    };
    match first {
        Some(Ok(d)) => d,
        Some(Err(_)) => Down::Ended,
        None => {
            // Exactly one answer comes: the frames handed out before the cancel, or Cancelled.
            let cancel = CoreMsg::TunnelCancel {
                conn: sid.conn,
                secret: sid.secret,
                reply: tx,
            };
            if !send(core, sid, cancel) {
                return Down::Unavailable;
            }
            match monoio::time::timeout(Duration::from_secs(5), rx.recv_async()).await {
                Ok(Ok(d)) => d,
                _ => Down::Unavailable,
            }
        }
    }
}

/// Whether `sid` names a live session: `Some(true)` yes; otherwise the refusal was written
/// (`Some(false)`), or the connection failed (`None`).
async fn check(core: &Core, wire: &mut Wire, sid: Sid) -> Option<bool> {
    let (tx, rx) = flume::bounded(1);
    let msg = CoreMsg::TunnelCheck {
        conn: sid.conn,
        secret: sid.secret,
        reply: tx,
    };
    let status = if send(core, sid, msg) {
        rx.recv_async().await.unwrap_or(503)
    } else {
        503
    };
    if status == 200 {
        return Some(true);
    }
    answer(core, wire, status, &[TEXT], refusal(status), false)
        .await
        .then_some(false)
}

fn refusal(status: u16) -> &'static [u8] {
    match status {
        403 => b"no such tunnel session",
        409 => b"up request out of order",
        _ => b"session unavailable, retry",
    }
}

/// Streams frames as chunks until the session ends, another downstream replaces this one or
/// the client goes away.
async fn stream(core: &Core, wire: &mut Wire, sid: Sid) {
    loop {
        let down = monoio::select! {
            d = poll_once(core, sid, STREAM_BEAT) => Some(d),
            _ = wire.stream.readable(false) => None,
        };
        match down {
            // The client closed (or sent bytes a stream does not take): frames it did not get
            // stay with the session (see `TunnelShared::hand_over`).
            None => return,
            Some(Down::Frames(b)) => {
                let mut out = Vec::with_capacity(b.len() + 16);
                http::chunk(&b, &mut out);
                if !write(core, wire, out).await {
                    return;
                }
            }
            Some(Down::Cancelled) => {}
            Some(_) => {
                let _ = write(core, wire, http::LAST_CHUNK.to_vec()).await;
                return;
            }
        }
    }
}

/// One long poll; `true` if the connection may serve another request.
async fn poll(core: &Core, wire: &mut Wire, sid: Sid, wait: Duration) -> bool {
    match poll_once(core, sid, wait).await {
        Down::Frames(b) => answer(core, wire, 200, &down_headers(None), &b, false).await,
        Down::Cancelled | Down::Replaced => {
            answer(core, wire, 200, &down_headers(None), b"", false).await
        }
        Down::Ended | Down::Forbidden => {
            answer(core, wire, 403, &[TEXT], refusal(403), false).await
        }
        Down::Unavailable => answer(core, wire, 503, &[TEXT], refusal(503), false).await,
    }
}

async fn up(core: &Core, sid: Sid, n: u64, body: Bytes) -> u16 {
    let (tx, rx) = flume::bounded(1);
    let msg = CoreMsg::TunnelUp {
        conn: sid.conn,
        secret: sid.secret,
        n,
        body,
        reply: tx,
    };
    if !send(core, sid, msg) {
        return 503;
    }
    rx.recv_async().await.unwrap_or(503)
}

async fn close(core: &Core, sid: Sid) -> u16 {
    let (tx, rx) = flume::bounded(1);
    let msg = CoreMsg::TunnelClose {
        conn: sid.conn,
        secret: sid.secret,
        reply: tx,
    };
    if !send(core, sid, msg) {
        return 503;
    }
    rx.recv_async().await.unwrap_or(503)
}

/// `POST /tern/open`: starts a session with the HELLO in `hello` and answers with WELCOME and
/// the session id, or 401 with the refusal. `true` if the connection may serve another request.
async fn open(
    core: &Rc<Core>,
    wire: &mut Wire,
    hello: Bytes,
    poll_mode: bool,
    peer: SocketAddr,
) -> bool {
    let Some(id) = core.alloc_id() else {
        tracing::error!("core {}: no connection slot left: tunnel refused", core.id);
        return false;
    };
    let secret: [u8; 16] = rand::random();
    let shared = Rc::new(ConnShared::default());
    let tunnel = Rc::new(TunnelShared::new(secret, Rc::clone(&shared), BACKLOG_LIMIT));
    core.tunnels.borrow_mut().insert(id, Rc::clone(&tunnel));
    inc(&METRICS.tunnel_sessions_total);
    let sid = Sid {
        core: core.id,
        conn: id,
        secret,
    };
    debug!(?sid, %peer, "tunnel open");
    let run_core = Rc::clone(core);
    monoio::spawn(async move {
        let opened = Opened {
            link: Link::Tunnel(tunnel),
            peer,
            initial: hello.to_vec(),
        };
        run_conn(Rc::clone(&run_core), id, shared, opened).await;
        // Late polls still find the last frames (the CLOSE) for a while.
        monoio::time::sleep(ENDED_GRACE).await;
        run_core.tunnels.borrow_mut().remove(&id);
    });
    let handshake = Duration::from_millis(core.node.cfg.timers.handshake_ms);
    let first = match poll_once(core, sid, handshake).await {
        Down::Frames(b) => b,
        _ => return answer(core, wire, 503, &[TEXT], refusal(503), false).await,
    };
    let welcomed = matches!(
        decode(&first, u32::MAX >> 8),
        Ok(Some((f, _))) if f.frame_type() == FrameType::WELCOME
    );
    if !welcomed {
        let mut body = first.to_vec();
        while let Down::Frames(more) = poll_once(core, sid, REFUSAL_TAIL).await {
            body.extend_from_slice(&more);
        }
        return answer(core, wire, 401, &[X_TERN], &body, false).await;
    }
    let sid_text = sid.to_string();
    if poll_mode {
        return answer(
            core,
            wire,
            200,
            &down_headers(Some(&sid_text)),
            &first,
            false,
        )
        .await;
    }
    let mut out = http::stream_head(200, &down_headers(Some(&sid_text)));
    http::chunk(&first, &mut out);
    if write(core, wire, out).await {
        stream(core, wire, sid).await;
    }
    false
}

/// Handles a tunnel message at the session's core.
pub fn handle(core: &Core, msg: CoreMsg) {
    let find = |conn: u32, secret: &[u8; 16]| -> Option<Rc<TunnelShared>> {
        core.tunnels
            .borrow()
            .get(&conn)
            .filter(|t| t.secret_matches(secret))
            .cloned()
    };
    match msg {
        CoreMsg::TunnelUp {
            conn,
            secret,
            n,
            body,
            reply,
        } => {
            let status = find(conn, &secret).map_or(403, |t| t.up(n, body));
            let _ = reply.try_send(status);
        }
        CoreMsg::TunnelPoll {
            conn,
            secret,
            reply,
        } => match find(conn, &secret) {
            Some(t) => t.attach(reply),
            None => {
                let _ = reply.try_send(Down::Forbidden);
            }
        },
        CoreMsg::TunnelCancel {
            conn,
            secret,
            reply,
        } => {
            if let Some(t) = find(conn, &secret) {
                t.cancel(&reply);
            }
        }
        CoreMsg::TunnelCheck {
            conn,
            secret,
            reply,
        } => {
            let status = find(conn, &secret).map_or(403, |t| if t.is_open() { 200 } else { 403 });
            let _ = reply.try_send(status);
        }
        CoreMsg::TunnelClose {
            conn,
            secret,
            reply,
        } => {
            let status = match find(conn, &secret) {
                Some(t) => {
                    t.close_by_peer();
                    204
                }
                None => 403,
            };
            let _ = reply.try_send(status);
        }
        _ => {}
    }
}
