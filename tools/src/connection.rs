//! One blocking connection to a tern node: handshake, frames out, frames in — over any
//! transport of SPEC §12 (native, TLS, WebSocket, HTTP tunnel), which it hides.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tern_protocol::{
    decode, Body, Capabilities, CloseReason, DecodeError, ErrorCode, Frame, Hello, Welcome,
    DEFAULT_MAX_BODY, PROTOCOL,
};

use crate::endpoint::{EndpointError, Endpoints, Rung, RungFailure, TransportKind};
use crate::tls::TlsError;
use crate::transport::{Transport, TransportOptions};

/// The largest body this client accepts (announced in HELLO).
pub const CLIENT_MAX_FRAME: u32 = 1 << 20;

/// What a HELLO says.
#[derive(Debug, Clone)]
pub struct HelloParams {
    pub token: String,
    pub device: String,
    pub resume_inbox_seq: u64,
    pub client: String,
}

impl HelloParams {
    pub fn new(token: impl Into<String>, device: impl Into<String>) -> HelloParams {
        HelloParams {
            token: token.into(),
            device: device.into(),
            resume_inbox_seq: 0,
            client: concat!("tern-tools/", env!("CARGO_PKG_VERSION")).into(),
        }
    }
}

/// Why a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("undecodable frame from the server: {0}")]
    Decode(#[from] DecodeError),
    #[error("server error {code}: {message}")]
    Server { code: ErrorCode, message: String },
    #[error("server closed the session ({reason}): {message}")]
    Closed {
        reason: CloseReason,
        message: String,
    },
    #[error("the server ended the connection")]
    Eof,
    #[error("timed out waiting for the server")]
    Timeout,
    #[error("unexpected frame from the server: {0}")]
    Unexpected(String),
    #[error("bad server address: {0}")]
    Endpoint(#[from] EndpointError),
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("HTTP {status}: {message}")]
    Http { status: u16, message: String },
    #[error("transport: {0}")]
    Transport(String),
    #[error("no rung of the ladder worked: {}", list_failures(.0))]
    AllRungsFailed(Vec<RungFailure>),
    /// HELLO was answered with REDIRECT: the user is served by another node, at these
    /// addresses (in the server's order of preference). [`Endpoints`] follows it.
    #[error("redirected to another node: {}", list_addrs(.addrs))]
    Redirected {
        epoch: u64,
        addrs: Vec<(tern_protocol::Transport, String)>,
    },
    /// More REDIRECTs in a row than a client follows (SPEC §REDIRECT) without a WELCOME.
    #[error("{0} redirects in a row without WELCOME")]
    TooManyRedirects(usize),
}

fn list_addrs(addrs: &[(tern_protocol::Transport, String)]) -> String {
    addrs
        .iter()
        .map(|(t, a)| format!("{} {a}", t.0))
        .collect::<Vec<_>>()
        .join(", ")
}

fn list_failures(f: &[RungFailure]) -> String {
    f.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl ConnectionError {
    /// The ERROR code, when the server sent one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ConnectionError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// A connection speaking the tern wire protocol over a blocking transport.
#[derive(Debug)]
pub struct Connection {
    transport: Transport,
    rung: Rung,
    rbuf: Vec<u8>,
    max_in: u32,
    next_rid: u32,
    /// Frames received while waiting for a response (pushes, receipts…), oldest first.
    backlog: VecDeque<Frame<'static>>,
    welcome: Option<Welcome<'static>>,
}

impl Connection {
    /// Opens a connection without a handshake. `addr` is a rung URL (`tls://host:443`,
    /// `ws://host:8080/tern/ws`, `http://host:8080`…) or `host:port` (native); TLS trusts the
    /// system's CAs (see [`Connection::open_rung`] for other options).
    pub fn open(addr: &str, timeout: Duration) -> Result<Connection, ConnectionError> {
        Connection::open_rung(&Rung::parse(addr)?, &TransportOptions::default(), timeout)
    }

    /// Opens the transport of `rung` (TCP, TLS and WebSocket handshakes within `timeout`).
    /// Over the HTTP tunnel, the first frame sent must be HELLO: it opens the session.
    pub fn open_rung(
        rung: &Rung,
        options: &TransportOptions,
        timeout: Duration,
    ) -> Result<Connection, ConnectionError> {
        let transport = Transport::open(rung, options, timeout)?;
        Ok(Connection {
            transport,
            rung: rung.clone(),
            rbuf: Vec::new(),
            max_in: DEFAULT_MAX_BODY,
            next_rid: 1,
            backlog: VecDeque::new(),
            welcome: None,
        })
    }

    /// Opens a connection and performs the HELLO/WELCOME handshake. `addr` is anything
    /// [`Endpoints::parse`] takes: one rung, a comma-separated list of fallbacks, or a bare
    /// host (the default ladder); each rung gets `timeout`.
    pub fn connect(
        addr: &str,
        hello: &HelloParams,
        timeout: Duration,
    ) -> Result<Connection, ConnectionError> {
        Endpoints::parse(addr)?
            .with_rung_timeout(timeout)
            .connect(hello)
    }

    /// Opens `rung` and performs the handshake, all within `timeout`.
    pub fn connect_rung(
        rung: &Rung,
        options: &TransportOptions,
        hello: &HelloParams,
        timeout: Duration,
    ) -> Result<Connection, ConnectionError> {
        let deadline = Instant::now() + timeout;
        let mut c = Connection::open_rung(rung, options, timeout)?;
        let body = Body::Hello(Hello {
            protocol: PROTOCOL,
            capabilities: Capabilities::ALL,
            max_frame: CLIENT_MAX_FRAME,
            token: hello.token.as_str().into(),
            device: hello.device.as_str().into(),
            resume_inbox_seq: hello.resume_inbox_seq,
            client: hello.client.as_str().into(),
        });
        let left = deadline.saturating_duration_since(Instant::now());
        match c.request(body, left)? {
            Frame {
                body: Body::Welcome(w),
                ..
            } => {
                // Our receive limit is the one HELLO announced; WELCOME's is for sending.
                c.max_in = CLIENT_MAX_FRAME;
                c.welcome = Some(w);
                Ok(c)
            }
            //= SPEC.md#redirect
            //# It is always followed by CLOSE with reason `REDIRECT`, after which the server
            //# closes the connection.
            // The CLOSE adds nothing; the connection is dropped without waiting for it.
            Frame {
                body: Body::Redirect(r),
                ..
            } => Err(ConnectionError::Redirected {
                epoch: r.epoch,
                addrs: r
                    .addrs
                    .iter()
                    .map(|a| (a.transport, a.addr.to_string()))
                    .collect(),
            }),
            other => Err(ConnectionError::Unexpected(format!(
                "{:?}",
                other.frame_type()
            ))),
        }
    }

    /// The rung this connection runs on.
    pub fn rung(&self) -> &Rung {
        &self.rung
    }

    /// The transport this connection runs on.
    pub fn transport_kind(&self) -> TransportKind {
        self.rung.kind
    }

    /// The HTTP tunnel's session id, once issued (tunnel only). Secret, like the token.
    pub fn tunnel_session(&self) -> Option<String> {
        self.transport.tunnel_session()
    }

    /// The WELCOME of the handshake.
    pub fn welcome(&self) -> Option<&Welcome<'static>> {
        self.welcome.as_ref()
    }

    /// A fresh request id.
    pub fn next_request_id(&mut self) -> u32 {
        let id = self.next_rid;
        self.next_rid = self.next_rid.wrapping_add(1).max(1);
        id
    }

    /// Sends a frame.
    pub fn send(&mut self, frame: &Frame<'_>) -> Result<(), ConnectionError> {
        let bytes = frame
            .to_bytes()
            .map_err(|e| ConnectionError::Unexpected(e.to_string()))?;
        self.send_raw(&bytes)
    }

    /// Sends raw bytes (tests send garbage with it).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ConnectionError> {
        self.transport.write_all(bytes)
    }

    /// The next frame, from the backlog or the socket; `Ok(None)` after `timeout` without one.
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<Frame<'static>>, ConnectionError> {
        if let Some(f) = self.backlog.pop_front() {
            return Ok(Some(f));
        }
        self.read_frame(timeout)
    }

    fn read_frame(&mut self, timeout: Duration) -> Result<Option<Frame<'static>>, ConnectionError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((frame, used)) = decode(&self.rbuf, self.max_in)? {
                let frame = frame.into_owned();
                self.rbuf.drain(..used);
                return Ok(Some(frame));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.transport.read_some(&mut self.rbuf, left)?;
        }
    }

    /// Sends a request with a fresh request id and waits for the frame answering it; frames
    /// received meanwhile stay in the backlog for [`Connection::recv`]. An ERROR answer, a
    /// closing ERROR or a CLOSE become errors.
    pub fn request(
        &mut self,
        body: Body<'_>,
        timeout: Duration,
    ) -> Result<Frame<'static>, ConnectionError> {
        let rid = self.next_request_id();
        self.request_with(Frame::new(rid, body), timeout)
    }

    /// As [`Connection::request`], with the frame (request id, flags) chosen by the caller.
    pub fn request_with(
        &mut self,
        frame: Frame<'_>,
        timeout: Duration,
    ) -> Result<Frame<'static>, ConnectionError> {
        let rid = frame.request_id;
        self.send(&frame)?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(f) = self.read_frame(left)? else {
                return Err(ConnectionError::Timeout);
            };
            match f.body {
                Body::Error(e) if f.request_id == rid || e.code.closes_connection() => {
                    return Err(ConnectionError::Server {
                        code: e.code,
                        message: e.message.into_owned(),
                    })
                }
                Body::Close(c) => {
                    return Err(ConnectionError::Closed {
                        reason: c.reason,
                        message: c.message.into_owned(),
                    })
                }
                _ if f.request_id == rid && rid != 0 => return Ok(f),
                _ => self.backlog.push_back(f),
            }
        }
    }

    /// Ends the transport (both directions; the tunnel posts `/tern/close` after what was
    /// sent, waiting for it at most 2 s).
    pub fn shutdown(&self) {
        self.transport.shutdown();
    }

    /// As [`Connection::shutdown`], after a WebSocket close message and TLS close_notify.
    pub fn close(&mut self) {
        self.transport.close();
    }
}

/// The `dev`/`device` claim of a JWT, read without verifying it (the node verifies), so a
/// command-line client can name the device its token is bound to.
pub fn token_device(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64url_decode(payload)?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("dev")
        .or_else(|| v.get("device"))?
        .as_str()
        .map(str::to_owned)
}

fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_the_device_claim() {
        // {"sub":"alice","dev":"phone","exp":1}
        let payload = "eyJzdWIiOiJhbGljZSIsImRldiI6InBob25lIiwiZXhwIjoxfQ";
        assert_eq!(
            token_device(&format!("h.{payload}.s")).as_deref(),
            Some("phone")
        );
        assert_eq!(token_device("garbage"), None);
    }
}
