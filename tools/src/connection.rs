//! One blocking connection to a tern node: handshake, frames out, frames in.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use tern_protocol::{
    decode, Body, Capabilities, CloseReason, DecodeError, ErrorCode, Frame, Hello, Welcome,
    DEFAULT_MAX_BODY, PROTOCOL,
};

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

/// A connection speaking the tern wire protocol over a blocking socket.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    rbuf: Vec<u8>,
    max_in: u32,
    next_rid: u32,
    /// Frames received while waiting for a response (pushes, receipts…), oldest first.
    backlog: VecDeque<Frame<'static>>,
    welcome: Option<Welcome<'static>>,
}

impl Connection {
    /// Opens a TCP connection without a handshake.
    pub fn open(addr: &str, timeout: Duration) -> Result<Connection, ConnectionError> {
        let mut last = None;
        for a in addr.to_socket_addrs()? {
            match TcpStream::connect_timeout(&a, timeout) {
                Ok(stream) => {
                    stream.set_nodelay(true)?;
                    return Ok(Connection {
                        stream,
                        rbuf: Vec::new(),
                        max_in: DEFAULT_MAX_BODY,
                        next_rid: 1,
                        backlog: VecDeque::new(),
                        welcome: None,
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.map_or(
            ConnectionError::Io(std::io::Error::new(ErrorKind::NotFound, "no address")),
            Into::into,
        ))
    }

    /// Opens a connection and performs the HELLO/WELCOME handshake.
    pub fn connect(
        addr: &str,
        hello: &HelloParams,
        timeout: Duration,
    ) -> Result<Connection, ConnectionError> {
        let mut c = Connection::open(addr, timeout)?;
        let body = Body::Hello(Hello {
            protocol: PROTOCOL,
            capabilities: Capabilities::ALL,
            max_frame: CLIENT_MAX_FRAME,
            token: hello.token.as_str().into(),
            device: hello.device.as_str().into(),
            resume_inbox_seq: hello.resume_inbox_seq,
            client: hello.client.as_str().into(),
        });
        match c.request(body, timeout)? {
            Frame {
                body: Body::Welcome(w),
                ..
            } => {
                // Our receive limit is the one HELLO announced; WELCOME's is for sending.
                c.max_in = CLIENT_MAX_FRAME;
                c.welcome = Some(w);
                Ok(c)
            }
            other => Err(ConnectionError::Unexpected(format!(
                "{:?}",
                other.frame_type()
            ))),
        }
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
        self.stream.write_all(bytes)?;
        Ok(())
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
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(ConnectionError::Eof),
                Ok(n) => self.rbuf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Ok(None)
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
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

    /// Shuts the socket down (both directions).
    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
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
