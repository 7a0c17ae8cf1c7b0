//! The front door of every listener (SPEC §12): reads the first bytes of a connection, takes a
//! PROXY header from a trusted source, runs the TLS handshake on the TLS listener, and decides
//! what the connection is — native frames, a WebSocket, tunnel requests — or refuses it with an
//! answer the client understands.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use tern_protocol::ErrorCode;
use tracing::debug;

use crate::link::{Link, Wire};
use crate::metrics::{inc, METRICS};
use crate::pool::BufPool;
use crate::server::Core;
use crate::session;
use crate::transport::detect::{detect, Detected, TLS_REFUSAL_ALERT};
use crate::transport::http;
use crate::transport::proxy::{self, ProxyHeader};
use crate::transport::tls::TlsLayer;
use crate::tunnel::{self, HttpEnd};

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// Native frames, WebSocket and tunnel in plaintext (`--native`, `--http`).
    Plain,
    /// TLS, and the same three inside it (`--tls`).
    Tls,
}

/// A connection that carries frames, with the bytes already read from it.
#[derive(Debug)]
pub struct Opened {
    pub link: Link,
    pub peer: SocketAddr,
    pub initial: Vec<u8>,
}

/// Largest first read while detecting: a PROXY header plus a TLS ClientHello fit easily.
const FIRST_READ: usize = 16 * 1024;

/// What waiting for bytes gave.
enum More {
    Bytes(Vec<u8>),
    /// End of stream or an error.
    Gone,
    /// Nothing within the timeout.
    Silent,
}

/// Reads more bytes into `buf` within `timeout`. Waits for readiness before taking a buffer, so
/// a silent connection holds none.
async fn read_more(
    stream: &mut TcpStream,
    buf: Vec<u8>,
    pool: &BufPool,
    timeout: Duration,
) -> More {
    use monoio::buf::IoBufMut as _;
    match monoio::time::timeout(timeout, stream.readable(false)).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return More::Gone,
        Err(_) => return More::Silent,
    }
    // The first read borrows a pooled buffer: connections arrive in storms, and buffers of
    // their own would be allocated and freed by the thousand.
    let mut buf = if buf.capacity() == 0 {
        pool.take()
    } else {
        buf
    };
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(FIRST_READ);
    }
    let len = buf.len();
    match monoio::time::timeout(timeout, stream.read(buf.slice_mut(len..))).await {
        Ok((Ok(n), slice)) if n > 0 => More::Bytes(slice.into_inner()),
        Ok(_) => More::Gone,
        Err(_) => More::Silent,
    }
}

/// Writes a last answer (nothing if empty) and closes our side.
async fn refuse(stream: &mut TcpStream, answer: Vec<u8>) {
    if !answer.is_empty() {
        let _ = stream.write_all(answer).await;
    }
    let _ = monoio::io::AsyncWriteRent::shutdown(stream).await;
}

/// A native ERROR frame, encoded.
fn error_bytes(code: ErrorCode, message: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = session::error(0, code, message).encode(&mut out);
    out
}

/// Answers a connection that sent nothing in time the way the native protocol does.
async fn handshake_timeout(stream: &mut TcpStream, kind: ListenerKind) {
    let answer = match kind {
        ListenerKind::Plain => error_bytes(ErrorCode::HANDSHAKE_TIMEOUT, "no HELLO in time"),
        ListenerKind::Tls => Vec::new(),
    };
    refuse(stream, answer).await;
}

/// Decides what the connection is. `None` when it was refused or served here (tunnel
/// requests, refusals).
pub async fn open(
    core: Rc<Core>,
    stream: TcpStream,
    peer: SocketAddr,
    kind: ListenerKind,
) -> Option<Opened> {
    let node = std::sync::Arc::clone(&core.node);
    let timeout = Duration::from_millis(node.cfg.timers.handshake_ms);
    let mut stream = stream;
    let mut peer = peer;
    let mut buf = Vec::new();
    let mut proxied = false;
    loop {
        match detect(&buf) {
            Detected::NeedMore => match read_more(&mut stream, buf, &core.pool, timeout).await {
                More::Bytes(b) => buf = b,
                More::Gone => return None,
                More::Silent => {
                    handshake_timeout(&mut stream, kind).await;
                    return None;
                }
            },
            Detected::Proxy => {
                let trusted = node.proxy_trusted.iter().any(|c| c.contains(peer.ip()));
                if !trusted || proxied {
                    inc(&METRICS.refused_total);
                    debug!(%peer, "PROXY header from an untrusted source: closed");
                    return None;
                }
                match proxy::parse(&buf) {
                    ProxyHeader::NeedMore => {
                        match read_more(&mut stream, buf, &core.pool, timeout).await {
                            More::Bytes(b) => buf = b,
                            More::Gone | More::Silent => return None,
                        }
                    }
                    ProxyHeader::Complete { len, client } => {
                        inc(&METRICS.proxy_headers_total);
                        buf.drain(..len);
                        if let Some(c) = client {
                            debug!(proxy = %peer, client = %c, "PROXY header");
                            peer = c;
                        }
                        proxied = true;
                    }
                    ProxyHeader::Invalid(why) => {
                        inc(&METRICS.refused_total);
                        debug!(%peer, "bad PROXY header: {why}");
                        return None;
                    }
                }
            }
            Detected::Native | Detected::Other if kind == ListenerKind::Plain => {
                inc(&METRICS.transport_native_total);
                return Some(Opened {
                    link: Link::Tcp(stream),
                    peer,
                    initial: buf,
                });
            }
            Detected::Native => {
                inc(&METRICS.refused_total);
                let answer = error_bytes(ErrorCode::UNSUPPORTED_VERSION, "this port requires TLS");
                refuse(&mut stream, answer).await;
                return None;
            }
            Detected::Other => {
                inc(&METRICS.refused_total);
                return None;
            }
            Detected::Tls if kind == ListenerKind::Plain => {
                inc(&METRICS.refused_total);
                refuse(&mut stream, TLS_REFUSAL_ALERT.to_vec()).await;
                return None;
            }
            Detected::Tls => {
                let tls = node.tls.as_ref()?.current();
                let layer = match TlsLayer::new(tls) {
                    Ok(l) => l,
                    Err(e) => {
                        debug!(%peer, "tls: {e}");
                        return None;
                    }
                };
                let wire = Wire::new(stream, Some(layer));
                return Box::pin(inside_tls(core, buf, wire, peer)).await;
            }
            Detected::Http if kind == ListenerKind::Tls => {
                inc(&METRICS.refused_total);
                let out = http::response(
                    400,
                    &[("Content-Type", "text/plain")],
                    b"this port requires TLS",
                    true,
                );
                refuse(&mut stream, out).await;
                return None;
            }
            Detected::Http => {
                return Box::pin(http_front(core, Wire::plain(stream), buf, peer)).await;
            }
        }
    }
}

/// Runs the TLS handshake (the ClientHello bytes are in `first`), then detects what the
/// plaintext is.
async fn inside_tls(
    core: Rc<Core>,
    first: Vec<u8>,
    mut wire: Wire,
    peer: SocketAddr,
) -> Option<Opened> {
    let node = std::sync::Arc::clone(&core.node);
    let timeout = Duration::from_millis(node.cfg.timers.handshake_ms);
    let mut app = Vec::new();
    let mut out = core.pool.take();
    let tls = wire.tls.as_mut()?;
    let res = tls.input(&first, &mut app, &mut out);
    if !out.is_empty() {
        let (r, o) = wire.stream.write_all(out).await;
        core.pool.put(o);
        if r.is_err() {
            return None;
        }
    } else {
        core.pool.put(out);
    }
    if let Err(e) = res {
        debug!(%peer, "tls handshake: {e}");
        inc(&METRICS.refused_total);
        return None;
    }
    // Until the first plaintext byte: the handshake, then the client's first request or frame.
    let deadline = monoio::time::Instant::now() + timeout;
    loop {
        match detect(&app) {
            Detected::NeedMore => {
                let step = deadline.saturating_duration_since(monoio::time::Instant::now());
                match monoio::time::timeout(step, wire.read_first(&mut app, &core.pool)).await {
                    Ok(Ok(true)) => {}
                    Ok(Ok(false)) | Ok(Err(_)) | Err(_) => return None,
                }
            }
            Detected::Http => {
                inc(&METRICS.transport_tls_total);
                // The HTTP side waits on the socket without writing first: nothing held there.
                if wire.flush(&core.pool).await.is_err() {
                    return None;
                }
                return Box::pin(http_front(core, wire, app, peer)).await;
            }
            // Native frames, or bytes the decoder will refuse with its own ERROR.
            _ => {
                inc(&METRICS.transport_tls_total);
                return Some(Opened {
                    link: Link::Wire(Box::new(wire)),
                    peer,
                    initial: app,
                });
            }
        }
    }
}

/// Serves HTTP requests: tunnel requests here, a WebSocket upgrade becomes a connection.
async fn http_front(core: Rc<Core>, wire: Wire, buf: Vec<u8>, peer: SocketAddr) -> Option<Opened> {
    match tunnel::serve_http(core, wire, buf, peer).await {
        HttpEnd::Done => None,
        HttpEnd::WebSocket {
            wire,
            initial,
            peer,
        } => {
            inc(&METRICS.transport_ws_total);
            Some(Opened {
                link: Link::Wire(wire),
                peer,
                initial,
            })
        }
    }
}
