//! The client half of the HTTP tunnel (SPEC §12): `POST /tern/open` carries HELLO and answers
//! with the session id and WELCOME; upstream frames go in `POST /tern/up?s=&n=` bodies, one
//! request at a time; downstream frames arrive in a chunked `GET /tern/down` stream or, when a
//! proxy buffers responses, in `GET /tern/poll` long polls; `POST /tern/close` ends it.
//!
//! Two threads per tunnel: the *down* thread opens the session and then reads the downstream
//! into a channel (so `recv` with a timeout is a channel wait); the *up* thread posts what the
//! connection writes, coalescing frames written while a request is in flight.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::connection::ConnectionError;
use crate::endpoint::{Rung, TransportKind, TunnelMode};
use crate::transport::{dial, is_timeout, Stream, TransportOptions};

/// The content type of tunnel bodies.
pub const CONTENT_TYPE: &str = "application/x-tern";
/// The response header carrying the session id.
pub const SESSION_HEADER: &str = "X-Tern-Session";
/// How long a poll asks the server to wait (SPEC default).
pub const POLL_WAIT_SECS: u64 = 25;

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Largest whole response body accepted (a poll answer holds every frame waiting).
const MAX_BODY: usize = 64 << 20;
/// Largest `up` body: frames written while a request was in flight go out together up to this.
const MAX_UP: usize = 1 << 20;
/// Blocking reads wake up this often to notice that the tunnel is closing.
const TICK: Duration = Duration::from_millis(500);
/// Attempts of one `up` request before the tunnel is declared broken.
const UP_ATTEMPTS: u32 = 3;

/// A byte pipe with a settable read timeout (the socket, or a test double).
pub(crate) trait Pipe: Read + Write {
    fn set_read_timeout(&self, t: Duration) -> std::io::Result<()>;
}

impl Pipe for Stream {
    fn set_read_timeout(&self, t: Duration) -> std::io::Result<()> {
        Stream::set_read_timeout(self, t)
    }
}

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub reason: String,
    /// HTTP/1.x minor version.
    pub minor: u8,
    pub headers: Vec<(String, String)>,
}

impl ResponseHead {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// Whether the connection may carry another request after this response.
    pub fn keep_alive(&self) -> bool {
        if self.has_token("Connection", "close") {
            return false;
        }
        self.minor >= 1 || self.has_token("Connection", "keep-alive")
    }

    /// How the body is delimited (RFC 9112 §6.3).
    pub fn framing(&self) -> Result<BodyFraming, ConnectionError> {
        if (100..200).contains(&self.status) || self.status == 204 || self.status == 304 {
            return Ok(BodyFraming::Length(0));
        }
        if self.has_token("Transfer-Encoding", "chunked") {
            return Ok(BodyFraming::Chunked(ChunkedDecoder::new()));
        }
        match self.header("Content-Length") {
            Some(v) => v
                .trim()
                .parse::<u64>()
                .map(BodyFraming::Length)
                .map_err(|_| ConnectionError::Transport(format!("bad Content-Length {v:?}"))),
            None => Ok(BodyFraming::UntilEof),
        }
    }
}

/// Parses a response head from the start of `buf`: `Ok(None)` if more bytes are needed, else the
/// head and its length.
pub fn parse_head(buf: &[u8]) -> Result<Option<(ResponseHead, usize)>, ConnectionError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
            let head = ResponseHead {
                status: resp.code.unwrap_or(0),
                reason: resp.reason.unwrap_or("").to_owned(),
                minor: resp.version.unwrap_or(1),
                headers: resp
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_owned(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect(),
            };
            Ok(Some((head, len)))
        }
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => Err(ConnectionError::Transport(
            "HTTP response head too large".into(),
        )),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(ConnectionError::Transport(format!(
            "bad HTTP response: {e}"
        ))),
    }
}

/// Why a chunked body is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("bad chunk size line")]
    BadSize,
    #[error("chunk size too large")]
    TooLarge,
    #[error("missing CRLF after chunk data")]
    MissingCrlf,
    #[error("trailer line too long")]
    TrailerTooLong,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading hex digits of the size; `ext` once past them (extensions, whitespace).
    Size {
        value: u64,
        digits: u8,
        ext: bool,
    },
    SizeLf {
        value: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// Trailer section: `len` bytes of the current line so far.
    Trailer {
        len: usize,
    },
    TrailerLf {
        len: usize,
    },
    Done,
}

/// Incremental decoder of `Transfer-Encoding: chunked` (RFC 9112 §7.1): feed it bytes as they
/// arrive, it appends the data and stops after the last chunk and trailers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkedDecoder {
    state: ChunkState,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> ChunkedDecoder {
        ChunkedDecoder {
            state: ChunkState::Size {
                value: 0,
                digits: 0,
                ext: false,
            },
        }
    }

    /// Whether the last chunk and the trailers have been read.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decodes from `input`, appending data to `out`; returns how many input bytes were used
    /// (fewer than given only once done: the rest belongs to the next response).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            if let ChunkState::Data { left } = self.state {
                let n = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(input.len() - i);
                out.extend_from_slice(&input[i..i + n]);
                i += n;
                let left = left - n as u64;
                self.state = if left == 0 {
                    ChunkState::DataCr
                } else {
                    ChunkState::Data { left }
                };
                continue;
            }
            let b = input[i];
            self.state = match self.state {
                ChunkState::Done => return Ok(i),
                // Handled above; kept for exhaustiveness.
                state @ ChunkState::Data { .. } => state,
                ChunkState::Size { value, digits, ext } => match b {
                    b'\r' if digits > 0 => ChunkState::SizeLf { value },
                    b'\n' if digits > 0 => Self::after_size(value),
                    _ if ext => ChunkState::Size { value, digits, ext },
                    b';' | b' ' | b'\t' if digits > 0 => ChunkState::Size {
                        value,
                        digits,
                        ext: true,
                    },
                    _ => {
                        let d = (b as char).to_digit(16).ok_or(ChunkError::BadSize)?;
                        if digits >= 15 {
                            return Err(ChunkError::TooLarge);
                        }
                        ChunkState::Size {
                            value: value << 4 | u64::from(d),
                            digits: digits + 1,
                            ext: false,
                        }
                    }
                },
                ChunkState::SizeLf { value } => match b {
                    b'\n' => Self::after_size(value),
                    _ => return Err(ChunkError::BadSize),
                },
                ChunkState::DataCr => match b {
                    b'\r' => ChunkState::DataLf,
                    // Lenient: a bare LF ends the line as well.
                    b'\n' => Self::size_start(),
                    _ => return Err(ChunkError::MissingCrlf),
                },
                ChunkState::DataLf => match b {
                    b'\n' => Self::size_start(),
                    _ => return Err(ChunkError::MissingCrlf),
                },
                ChunkState::Trailer { len } => match b {
                    b'\r' => ChunkState::TrailerLf { len },
                    b'\n' if len == 0 => ChunkState::Done,
                    b'\n' => ChunkState::Trailer { len: 0 },
                    _ if len >= MAX_HEAD => return Err(ChunkError::TrailerTooLong),
                    _ => ChunkState::Trailer { len: len + 1 },
                },
                ChunkState::TrailerLf { len } => match b {
                    b'\n' if len == 0 => ChunkState::Done,
                    b'\n' => ChunkState::Trailer { len: 0 },
                    _ => return Err(ChunkError::BadSize),
                },
            };
            i += 1;
        }
        Ok(i)
    }

    fn size_start() -> ChunkState {
        ChunkState::Size {
            value: 0,
            digits: 0,
            ext: false,
        }
    }

    fn after_size(value: u64) -> ChunkState {
        if value == 0 {
            ChunkState::Trailer { len: 0 }
        } else {
            ChunkState::Data { left: value }
        }
    }
}

/// How a response body ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyFraming {
    Chunked(ChunkedDecoder),
    /// Bytes still to come.
    Length(u64),
    /// Until the server closes the connection.
    UntilEof,
}

/// What a read of body bytes produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyRead {
    /// Some bytes were appended.
    Data,
    /// The body is complete.
    End,
}

/// An HTTP/1.1 response reader over a pipe, with its own buffer (a keep-alive connection may
/// hold the start of the next response).
pub(crate) struct HttpReader<S> {
    s: S,
    buf: Vec<u8>,
    cancel: Option<Arc<AtomicBool>>,
}

impl<S> std::fmt::Debug for HttpReader<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpReader")
            .field("buffered", &self.buf.len())
            .finish_non_exhaustive()
    }
}

impl<S: Pipe> HttpReader<S> {
    pub(crate) fn new(s: S) -> HttpReader<S> {
        HttpReader {
            s,
            buf: Vec::new(),
            cancel: None,
        }
    }

    /// Reads give up (as [`ConnectionError::Eof`]) soon after `cancel` is set.
    fn with_cancel(mut self, cancel: Arc<AtomicBool>) -> HttpReader<S> {
        self.cancel = Some(cancel);
        self
    }

    pub(crate) fn into_parts(self) -> (S, Vec<u8>) {
        (self.s, self.buf)
    }

    fn get_mut(&mut self) -> &mut S {
        &mut self.s
    }

    /// Reads more bytes into the buffer: `Ok(0)` at the end of the stream, [`Timeout`] at the
    /// deadline (none: wait for ever, still noticing `cancel`).
    ///
    /// [`Timeout`]: ConnectionError::Timeout
    fn fill(&mut self, deadline: Option<Instant>) -> Result<usize, ConnectionError> {
        loop {
            if self
                .cancel
                .as_ref()
                .is_some_and(|c| c.load(Ordering::Relaxed))
            {
                return Err(ConnectionError::Eof);
            }
            let wait = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(ConnectionError::Timeout);
                    }
                    left.min(TICK)
                }
                None => TICK,
            };
            self.s.set_read_timeout(wait)?;
            let mut chunk = [0u8; 16 * 1024];
            match self.s.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if is_timeout(&e) || e.kind() == std::io::ErrorKind::Interrupted => {}
                // A TLS peer that closes without close_notify.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The next response head (interim 1xx answers skipped).
    pub(crate) fn read_head(&mut self, deadline: Instant) -> Result<ResponseHead, ConnectionError> {
        loop {
            if let Some((head, len)) = parse_head(&self.buf)? {
                self.buf.drain(..len);
                if (100..200).contains(&head.status) {
                    continue;
                }
                return Ok(head);
            }
            if self.fill(Some(deadline))? == 0 {
                return Err(ConnectionError::Eof);
            }
        }
    }

    /// Appends body bytes to `out`, reading only if none are buffered.
    pub(crate) fn read_body_some(
        &mut self,
        framing: &mut BodyFraming,
        out: &mut Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<BodyRead, ConnectionError> {
        loop {
            let before = out.len();
            match framing {
                BodyFraming::Length(0) => return Ok(BodyRead::End),
                BodyFraming::Length(left) => {
                    let n = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(self.buf.len());
                    out.extend_from_slice(&self.buf[..n]);
                    self.buf.drain(..n);
                    *left -= n as u64;
                }
                BodyFraming::Chunked(d) => {
                    let used = d
                        .feed(&self.buf, out)
                        .map_err(|e| ConnectionError::Transport(format!("chunked body: {e}")))?;
                    self.buf.drain(..used);
                    if d.is_done() && out.len() == before {
                        return Ok(BodyRead::End);
                    }
                }
                BodyFraming::UntilEof => {
                    out.append(&mut self.buf);
                }
            }
            if out.len() > before {
                return Ok(BodyRead::Data);
            }
            if self.fill(deadline)? == 0 {
                return match framing {
                    BodyFraming::UntilEof => Ok(BodyRead::End),
                    _ => Err(ConnectionError::Eof),
                };
            }
        }
    }

    /// The whole body.
    pub(crate) fn read_body(
        &mut self,
        head: &ResponseHead,
        deadline: Instant,
    ) -> Result<Vec<u8>, ConnectionError> {
        let mut framing = head.framing()?;
        let mut out = Vec::new();
        while self.read_body_some(&mut framing, &mut out, Some(deadline))? == BodyRead::Data {
            if out.len() > MAX_BODY {
                return Err(ConnectionError::Transport("HTTP body too large".into()));
            }
        }
        Ok(out)
    }
}

/// Writes an HTTP/1.1 request in one write (one TCP segment for small requests).
pub(crate) fn write_request<W: Write>(
    w: &mut W,
    method: &str,
    target: &str,
    host: &str,
    body: Option<&[u8]>,
) -> std::io::Result<()> {
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n");
    match body {
        Some(b) => {
            req.push_str(&format!(
                "Content-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        // Downstream answers must come from the server, never from a cache.
        None => req.push_str("Cache-Control: no-cache\r\n"),
    }
    req.push_str(&format!("Accept: {CONTENT_TYPE}\r\n\r\n"));
    let mut bytes = req.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(b);
    }
    w.write_all(&bytes)?;
    w.flush()
}

/// Where the tunnel's requests go.
#[derive(Debug)]
struct Target {
    rung: Rung,
    options: TransportOptions,
    /// Through a forward proxy without CONNECT: requests carry absolute URIs.
    absolute: bool,
    timeout: Duration,
}

impl Target {
    /// The request target of `path_and_query` (e.g. `/tern/up?s=..&n=0`).
    fn uri(&self, path_and_query: &str) -> String {
        if self.absolute {
            format!(
                "http://{}{}{}",
                self.rung.authority(),
                self.rung.path,
                path_and_query
            )
        } else {
            format!("{}{}", self.rung.path, path_and_query)
        }
    }

    fn connect(&self, cancel: &Arc<AtomicBool>) -> Result<HttpReader<Stream>, ConnectionError> {
        let s = dial(&self.rung, &self.options, Instant::now() + self.timeout)?;
        Ok(HttpReader::new(s).with_cancel(cancel.clone()))
    }

    /// Sends a request and reads the answer's head.
    fn exchange(
        &self,
        conn: &mut HttpReader<Stream>,
        method: &str,
        path_and_query: &str,
        body: Option<&[u8]>,
        deadline: Instant,
    ) -> Result<ResponseHead, ConnectionError> {
        conn.get_mut()
            .set_write_timeout(Some(deadline.saturating_duration_since(Instant::now())))?;
        write_request(
            conn.get_mut(),
            method,
            &self.uri(path_and_query),
            &self.rung.authority(),
            body,
        )?;
        conn.read_head(deadline)
    }
}

enum Down {
    Data(Vec<u8>),
    /// The downstream ended: cleanly (`None`: the session is over) or with an error.
    End(Option<ConnectionError>),
}

enum Up {
    Data(Vec<u8>),
    Close,
}

/// State the threads and the connection share.
#[derive(Debug, Default)]
struct Shared {
    closing: Arc<AtomicBool>,
    sid: Mutex<Option<String>>,
    /// When the first `up` answered since the downstream last delivered anything was answered:
    /// a stream that stays silent long after that is held back by something in between.
    up_unechoed: Mutex<Option<Instant>>,
}

impl Shared {
    fn up_answered(&self) {
        self.up_unechoed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(Instant::now);
    }

    fn down_delivered(&self) {
        *self.up_unechoed.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn unechoed_for(&self) -> Duration {
        self.up_unechoed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map_or(Duration::ZERO, |t| t.elapsed())
    }
}

/// The heartbeat WELCOME suggests, from the first downstream bytes.
fn welcome_heartbeat(first: &[u8]) -> Option<Duration> {
    match tern_protocol::decode(first, tern_protocol::DEFAULT_MAX_BODY) {
        Ok(Some((f, _))) => match f.body {
            tern_protocol::Body::Welcome(w) => {
                Some(Duration::from_secs(u64::from(w.heartbeat_secs.max(1))))
            }
            _ => None,
        },
        _ => None,
    }
}

/// Margin over the heartbeat before a silent stream is given up for polls: the client's own
/// PING goes out one heartbeat after its last frame, its PONG must have time to come back.
const STALL_MARGIN: Duration = Duration::from_secs(2);

/// Threads and channels of an opened tunnel.
#[derive(Debug)]
struct Running {
    up: mpsc::Sender<Up>,
    down: mpsc::Receiver<Down>,
    up_done: mpsc::Receiver<()>,
}

/// One tunnel session, as a byte pipe.
pub(crate) struct Tunnel {
    target: Arc<Target>,
    shared: Arc<Shared>,
    /// The connection dialled by `open`, used for `/tern/open` by the first write.
    first: Option<Stream>,
    running: Option<Running>,
    ended: bool,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("rung", &self.target.rung)
            .field("opened", &self.running.is_some())
            .finish_non_exhaustive()
    }
}

impl Tunnel {
    /// Connects to the server (or the proxy); the first write, HELLO, opens the session.
    pub(crate) fn open(
        rung: &Rung,
        options: &TransportOptions,
        timeout: Duration,
    ) -> Result<Tunnel, ConnectionError> {
        let first = dial(rung, options, Instant::now() + timeout)?;
        Ok(Tunnel {
            target: Arc::new(Target {
                rung: rung.clone(),
                options: options.clone(),
                absolute: options.proxy().is_some() && rung.kind == TransportKind::Tunnel,
                timeout,
            }),
            shared: Arc::default(),
            first: Some(first),
            running: None,
            ended: false,
        })
    }

    pub(crate) fn session_id(&self) -> Option<String> {
        self.shared
            .sid
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The first write is the HELLO of `/tern/open`; later writes go upstream.
    pub(crate) fn write(&mut self, bytes: &[u8]) -> Result<(), ConnectionError> {
        if let Some(running) = &self.running {
            return running
                .up
                .send(Up::Data(bytes.to_vec()))
                .map_err(|_| ConnectionError::Eof);
        }
        let Some(first) = self.first.take() else {
            return Err(ConnectionError::Eof);
        };
        let (up_tx, up_rx) = mpsc::channel();
        let (down_tx, down_rx) = mpsc::channel();
        let (sid_tx, sid_rx) = mpsc::channel();
        let (done_tx, up_done) = mpsc::channel();
        let hello = bytes.to_vec();
        let (target, shared, tx) = (self.target.clone(), self.shared.clone(), down_tx.clone());
        std::thread::Builder::new()
            .name("tern-tunnel-down".into())
            .spawn(move || {
                let end = match down_main(&target, &shared, first, &hello, &sid_tx, &tx) {
                    Ok(()) => None,
                    Err(_) if shared.closing.load(Ordering::Relaxed) => None,
                    Err(e) => Some(e),
                };
                let _ = tx.send(Down::End(end));
            })?;
        let (target, shared) = (self.target.clone(), self.shared.clone());
        std::thread::Builder::new()
            .name("tern-tunnel-up".into())
            .spawn(move || {
                up_main(&target, &shared, &sid_rx, &up_rx, &down_tx);
                let _ = done_tx.send(());
            })?;
        self.running = Some(Running {
            up: up_tx,
            down: down_rx,
            up_done,
        });
        Ok(())
    }

    /// Appends downstream bytes arriving within `timeout`; 0 if none did.
    pub(crate) fn read_some(
        &mut self,
        buf: &mut Vec<u8>,
        timeout: Duration,
    ) -> Result<usize, ConnectionError> {
        let Some(running) = &self.running else {
            std::thread::sleep(timeout);
            return Ok(0);
        };
        if self.ended {
            return Err(ConnectionError::Eof);
        }
        match running.down.recv_timeout(timeout) {
            Ok(Down::Data(b)) => {
                buf.extend_from_slice(&b);
                Ok(b.len())
            }
            Ok(Down::End(e)) => {
                self.ended = true;
                Err(e.unwrap_or(ConnectionError::Eof))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(0),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                self.ended = true;
                Err(ConnectionError::Eof)
            }
        }
    }

    /// Flushes what was written, ends the session with `/tern/close` and stops the threads;
    /// waits a little for the close to go out.
    pub(crate) fn shutdown(&self) {
        // First, so that the down thread does not re-attach to the session being closed.
        self.shared.closing.store(true, Ordering::Relaxed);
        if let Some(running) = &self.running {
            if running.up.send(Up::Close).is_ok() {
                let _ = running.up_done.recv_timeout(Duration::from_secs(2));
            }
        }
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        // Without waiting: the up thread closes the session on its own once its channel ends.
        self.shared.closing.store(true, Ordering::Relaxed);
    }
}

/// How an open attempt ended.
enum Opened {
    /// A session: its id, the connection its downstream continues on, and how.
    Session {
        sid: String,
        conn: HttpReader<Stream>,
        framing: BodyFraming,
        first: Vec<u8>,
        poll: bool,
    },
    /// The server refused HELLO: the body holds its ERROR/CLOSE frames.
    Refused(Vec<u8>),
    /// Auto mode: the stream delivered nothing in time (a buffering proxy); `sid` if known.
    Buffered(Option<String>),
}

fn open_session(
    target: &Target,
    mut conn: HttpReader<Stream>,
    hello: &[u8],
    poll: bool,
    grace: Option<Duration>,
) -> Result<Opened, ConnectionError> {
    let deadline = Instant::now() + target.timeout;
    let first_deadline = grace.map_or(deadline, |g| Instant::now() + g);
    let path = if poll {
        "/tern/open?mode=poll"
    } else {
        "/tern/open?mode=stream"
    };
    let head = match target.exchange(&mut conn, "POST", path, Some(hello), first_deadline) {
        Err(ConnectionError::Timeout) if grace.is_some() => return Ok(Opened::Buffered(None)),
        r => r?,
    };
    match head.status {
        200 => {}
        401 => return Ok(Opened::Refused(conn.read_body(&head, deadline)?)),
        status => {
            let body = conn.read_body(&head, deadline).unwrap_or_default();
            return Err(ConnectionError::Http {
                status,
                message: format!(
                    "tunnel open refused: {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)]).trim()
                ),
            });
        }
    }
    let sid = head
        .header(SESSION_HEADER)
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ConnectionError::Transport(format!("tunnel open: no {SESSION_HEADER}")))?;
    let mut framing = head.framing()?;
    let mut first = Vec::new();
    if poll {
        first = conn.read_body(&head, deadline)?;
        framing = BodyFraming::Length(0);
        if !head.keep_alive() {
            // Nothing more comes on this connection; polls go on a new one.
            framing = BodyFraming::UntilEof;
        }
    } else {
        match conn.read_body_some(&mut framing, &mut first, Some(first_deadline)) {
            Ok(BodyRead::Data) => {}
            Ok(BodyRead::End) => {
                return Err(ConnectionError::Transport(
                    "tunnel open: empty downstream".into(),
                ))
            }
            Err(ConnectionError::Timeout) if grace.is_some() => {
                return Ok(Opened::Buffered(Some(sid)))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Opened::Session {
        sid,
        conn,
        framing,
        first,
        poll,
    })
}

/// Posts `/tern/close` (best effort, briefly).
fn post_close(target: &Target, conn: Option<HttpReader<Stream>>, sid: &str) {
    let cancel = Arc::new(AtomicBool::new(false));
    let Some(mut conn) = conn.or_else(|| target.connect(&cancel).ok()) else {
        return;
    };
    let deadline = Instant::now() + target.timeout.min(Duration::from_secs(2));
    let _ = target.exchange(
        &mut conn,
        "POST",
        &format!("/tern/close?s={sid}"),
        Some(&[]),
        deadline,
    );
}

/// The down thread: opens the session, then moves the downstream into the channel until the
/// session ends.
fn down_main(
    target: &Target,
    shared: &Shared,
    first: Stream,
    hello: &[u8],
    sid_tx: &mpsc::Sender<String>,
    tx: &mpsc::Sender<Down>,
) -> Result<(), ConnectionError> {
    let cancel = &shared.closing;
    let conn = HttpReader::new(first).with_cancel(cancel.clone());
    let mode = target.rung.tunnel_mode;
    let grace =
        (mode == TunnelMode::Auto).then(|| (target.timeout / 2).min(Duration::from_secs(3)));
    let mut opened = open_session(target, conn, hello, mode == TunnelMode::Poll, grace)?;
    if let Opened::Buffered(sid) = opened {
        // The stream's first bytes did not come through: a proxy holds the response back.
        // That session is abandoned (closed if its id came) and a polling one opened instead.
        if let Some(sid) = sid {
            post_close(target, None, &sid);
        }
        opened = open_session(target, target.connect(cancel)?, hello, true, None)?;
    }
    let (sid, mut conn, mut framing, first, poll) = match opened {
        Opened::Session {
            sid,
            conn,
            framing,
            first,
            poll,
        } => (sid, conn, framing, first, poll),
        Opened::Refused(body) => {
            let _ = tx.send(Down::Data(body));
            return Ok(());
        }
        Opened::Buffered(_) => {
            return Err(ConnectionError::Transport(
                "tunnel: no downstream came through".into(),
            ))
        }
    };
    *shared.sid.lock().unwrap_or_else(|p| p.into_inner()) = Some(sid.clone());
    // The up thread starts posting only now: the session (and its id) is settled.
    let _ = sid_tx.send(sid.clone());
    // SPEC §12: a stream that delivers nothing for a heartbeat while requests are answered is
    // held back by a proxy; in auto mode the session moves to polls.
    let stall = (mode == TunnelMode::Auto)
        .then(|| welcome_heartbeat(&first))
        .flatten()
        .map(|hb| hb + STALL_MARGIN);
    if !first.is_empty() && tx.send(Down::Data(first)).is_err() {
        return Ok(());
    }
    if poll {
        let conn = (framing == BodyFraming::Length(0)).then_some(conn);
        return poll_loop(target, shared, &sid, conn, tx);
    }
    // Streams that end at once, again and again, mean something in between cuts them.
    let mut empty_ends = 0u32;
    loop {
        let mut out = Vec::new();
        let check = stall.map(|_| Instant::now() + Duration::from_secs(1));
        let read = conn.read_body_some(&mut framing, &mut out, check);
        if !out.is_empty() {
            empty_ends = 0;
            shared.down_delivered();
            if tx.send(Down::Data(out)).is_err() {
                return Ok(());
            }
        }
        match read {
            Ok(BodyRead::Data) => continue,
            Err(ConnectionError::Timeout) => {
                if stall.is_some_and(|s| shared.unechoed_for() >= s) {
                    // The new downstream (a poll) replaces the stream on the server.
                    return poll_loop(target, shared, &sid, None, tx);
                }
                continue;
            }
            Ok(BodyRead::End) | Err(ConnectionError::Eof | ConnectionError::Io(_)) => {}
            Err(e) => return Err(e),
        }
        if shared.closing.load(Ordering::Relaxed) {
            return Ok(());
        }
        empty_ends += 1;
        if empty_ends > 3 {
            return Err(ConnectionError::Transport(
                "tunnel downstream keeps ending".into(),
            ));
        }
        // The stream ended (a proxy's timeout, or the session's end): attach a new one. A
        // session that is over answers 403.
        let keep = matches!(read, Ok(BodyRead::End)) && !matches!(framing, BodyFraming::UntilEof);
        if !keep {
            conn = target.connect(cancel)?;
        }
        let deadline = Instant::now() + target.timeout;
        let head = target.exchange(
            &mut conn,
            "GET",
            &format!("/tern/down?s={sid}"),
            None,
            deadline,
        )?;
        match head.status {
            200 => framing = head.framing()?,
            401 | 403 => return Ok(()),
            status => {
                return Err(ConnectionError::Http {
                    status,
                    message: "tunnel downstream refused".into(),
                })
            }
        }
    }
}

/// Long polls until the session ends.
fn poll_loop(
    target: &Target,
    shared: &Shared,
    sid: &str,
    mut conn: Option<HttpReader<Stream>>,
    tx: &mpsc::Sender<Down>,
) -> Result<(), ConnectionError> {
    let mut failures = 0u32;
    let path = format!("/tern/poll?s={sid}&wait={POLL_WAIT_SECS}");
    loop {
        if shared.closing.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut c = match conn.take() {
            Some(c) => c,
            None => target.connect(&shared.closing)?,
        };
        // The server answers within `wait` seconds; the rung's timeout is the margin.
        let deadline = Instant::now() + Duration::from_secs(POLL_WAIT_SECS) + target.timeout;
        let answer = target
            .exchange(&mut c, "GET", &path, None, deadline)
            .and_then(|head| Ok((c.read_body(&head, deadline)?, head)));
        match answer {
            Ok((body, head)) => {
                failures = 0;
                match head.status {
                    200 => {
                        if !body.is_empty() {
                            shared.down_delivered();
                            if tx.send(Down::Data(body)).is_err() {
                                return Ok(());
                            }
                        }
                        if head.keep_alive() {
                            conn = Some(c);
                        }
                    }
                    401 | 403 => return Ok(()),
                    status => {
                        return Err(ConnectionError::Http {
                            status,
                            message: "tunnel poll refused".into(),
                        })
                    }
                }
            }
            // One failed poll may be a dropped keep-alive connection; two in a row are not.
            Err(e) => {
                failures += 1;
                if failures >= 2 || shared.closing.load(Ordering::Relaxed) {
                    return Err(e);
                }
            }
        }
    }
}

/// The up thread: posts what the connection writes, in order, one request at a time.
fn up_main(
    target: &Target,
    shared: &Shared,
    sid_rx: &mpsc::Receiver<String>,
    rx: &mpsc::Receiver<Up>,
    down: &mpsc::Sender<Down>,
) {
    let Ok(sid) = sid_rx.recv() else {
        // No session came to be: nothing to post, nothing to close.
        return;
    };
    let mut conn: Option<HttpReader<Stream>> = None;
    let mut n: u64 = 0;
    // A frame that did not fit in the previous request's body.
    let mut carry: Option<Vec<u8>> = None;
    // Up::Close, or the connection dropped: end the session on the server.
    while let Ok(Up::Data(mut body)) = carry.take().map(Up::Data).map_or_else(|| rx.recv(), Ok) {
        let mut close_after = false;
        // Frames written meanwhile go along, up to the server's smallest body limit (1 MiB).
        loop {
            match rx.try_recv() {
                Ok(Up::Data(b)) if body.len() + b.len() <= MAX_UP => body.extend_from_slice(&b),
                Ok(Up::Data(b)) => {
                    carry = Some(b);
                    break;
                }
                Ok(Up::Close) => {
                    close_after = true;
                    break;
                }
                Err(_) => break,
            }
        }
        match post_up(target, shared, &mut conn, &sid, n, &body) {
            Ok(()) => {
                n += 1;
                shared.up_answered();
            }
            Err(e) => {
                if !shared.closing.load(Ordering::Relaxed) {
                    let _ = down.send(Down::End(Some(e)));
                }
                return;
            }
        }
        if close_after {
            break;
        }
    }
    post_close(target, conn, &sid);
}

/// One `up` request, retried with the same `n` on a new connection when the answer is lost
/// (the server answers a repeated `n` with 204 without applying it twice).
fn post_up(
    target: &Target,
    shared: &Shared,
    conn: &mut Option<HttpReader<Stream>>,
    sid: &str,
    n: u64,
    body: &[u8],
) -> Result<(), ConnectionError> {
    let path = format!("/tern/up?s={sid}&n={n}");
    let mut last = ConnectionError::Timeout;
    for _ in 0..UP_ATTEMPTS {
        let mut c = match conn.take() {
            Some(c) => c,
            None => match target.connect(&Arc::new(AtomicBool::new(false))) {
                Ok(c) => c,
                Err(e) => {
                    last = e;
                    continue;
                }
            },
        };
        let deadline = Instant::now() + target.timeout;
        let answer = target
            .exchange(&mut c, "POST", &path, Some(body), deadline)
            .and_then(|head| Ok((c.read_body(&head, deadline)?, head)));
        match answer {
            Ok((_, head)) => {
                if head.keep_alive() {
                    *conn = Some(c);
                }
                return match head.status {
                    200 | 204 => Ok(()),
                    // The session is over; the downstream reports its end.
                    401 | 403 => Err(ConnectionError::Eof),
                    409 => Err(ConnectionError::Transport(format!(
                        "tunnel upstream out of order (409 for n={n})"
                    ))),
                    status => Err(ConnectionError::Http {
                        status,
                        message: "tunnel upstream refused".into(),
                    }),
                };
            }
            Err(e) => last = e,
        }
        if shared.closing.load(Ordering::Relaxed) {
            break;
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Cursor;

    impl Pipe for Cursor<Vec<u8>> {
        fn set_read_timeout(&self, _: Duration) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        let used = d.feed(input, &mut out)?;
        Ok((out, used, d.is_done()))
    }

    #[test]
    fn chunked_decodes_in_one_go_and_byte_by_byte() {
        let body =
            b"5\r\nhello\r\n1;ext=1\r\n \r\nA \r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        let (out, used, done) = decode_all(body).unwrap();
        assert_eq!(out, b"hello 0123456789");
        assert!(done);
        assert_eq!(&body[used..], b"NEXT", "bytes after the body are left");
        // Every split point gives the same result.
        for split in 0..=used {
            let mut d = ChunkedDecoder::new();
            let mut out = Vec::new();
            let a = d.feed(&body[..split], &mut out).unwrap();
            assert_eq!(a, split);
            let b = d.feed(&body[split..], &mut out).unwrap();
            assert_eq!(out, b"hello 0123456789", "split at {split}");
            assert_eq!(split + b, used, "split at {split}");
            assert!(d.is_done());
        }
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        for b in body.iter().take(used) {
            d.feed(std::slice::from_ref(b), &mut out).unwrap();
        }
        assert!(d.is_done());
        assert_eq!(out, b"hello 0123456789");
    }

    #[test]
    fn chunked_rejects_malformed_input() {
        assert_eq!(decode_all(b"zz\r\n"), Err(ChunkError::BadSize));
        assert_eq!(decode_all(b"\r\n"), Err(ChunkError::BadSize));
        assert_eq!(
            decode_all(b"1234567890abcdef0\r\n"),
            Err(ChunkError::TooLarge)
        );
        assert_eq!(decode_all(b"2\r\nabX"), Err(ChunkError::MissingCrlf));
        assert_eq!(decode_all(b"2\r\nab\rX"), Err(ChunkError::MissingCrlf));
        assert_eq!(decode_all(b"2\rX"), Err(ChunkError::BadSize));
        // Lenient on bare LF line ends.
        let (out, _, done) = decode_all(b"2\nab\n0\n\n").unwrap();
        assert_eq!((out.as_slice(), done), (&b"ab"[..], true));
        // Incomplete is not an error, just not done.
        let (out, _, done) = decode_all(b"4\r\nab").unwrap();
        assert_eq!((out.as_slice(), done), (&b"ab"[..], false));
    }

    #[test]
    fn heads_parse_and_tell_framing() {
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nX-Tern").unwrap().is_none());
        let (h, len) = parse_head(
            b"HTTP/1.1 200 OK\r\nx-tern-session: abc\r\nTransfer-Encoding: gzip, chunked\r\n\r\nrest",
        )
        .unwrap()
        .unwrap();
        assert_eq!(len, 74);
        assert_eq!(h.header(SESSION_HEADER), Some("abc"));
        assert!(matches!(h.framing().unwrap(), BodyFraming::Chunked(_)));
        assert!(h.keep_alive());
        let (h, _) = parse_head(b"HTTP/1.0 401 Unauthorized\r\nContent-Length: 7\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.status, h.framing().unwrap()),
            (401, BodyFraming::Length(7))
        );
        assert!(!h.keep_alive());
        let (h, _) = parse_head(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing().unwrap(), BodyFraming::Length(0));
        assert!(!h.keep_alive());
        let (h, _) = parse_head(b"HTTP/1.1 200 OK\r\n\r\n").unwrap().unwrap();
        assert_eq!(h.framing().unwrap(), BodyFraming::UntilEof);
        let (h, _) = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.framing().is_err());
        assert!(parse_head(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
    }

    #[test]
    fn reader_reads_keep_alive_responses_back_to_back() {
        let wire = b"HTTP/1.1 100 Continue\r\n\r\n\
            HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc\
            HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\ndef\r\n2\r\ngh\r\n0\r\n\r\n\
            HTTP/1.1 204 No Content\r\n\r\n\
            HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end";
        let mut r = HttpReader::new(Cursor::new(wire.to_vec()));
        let deadline = Instant::now() + Duration::from_secs(1);
        let h = r.read_head(deadline).unwrap();
        assert_eq!(r.read_body(&h, deadline).unwrap(), b"abc");
        let h = r.read_head(deadline).unwrap();
        // Streamed reading hands out data as it is decoded.
        let mut framing = h.framing().unwrap();
        let mut out = Vec::new();
        while r
            .read_body_some(&mut framing, &mut out, Some(deadline))
            .unwrap()
            == BodyRead::Data
        {}
        assert_eq!(out, b"defgh");
        let h = r.read_head(deadline).unwrap();
        assert_eq!(h.status, 204);
        assert!(r.read_body(&h, deadline).unwrap().is_empty());
        let h = r.read_head(deadline).unwrap();
        assert_eq!(r.read_body(&h, deadline).unwrap(), b"until the end");
        assert!(matches!(r.read_head(deadline), Err(ConnectionError::Eof)));
    }

    #[test]
    fn a_cut_body_is_eof() {
        let mut r = HttpReader::new(Cursor::new(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc".to_vec(),
        ));
        let deadline = Instant::now() + Duration::from_secs(1);
        let h = r.read_head(deadline).unwrap();
        assert!(matches!(
            r.read_body(&h, deadline),
            Err(ConnectionError::Eof)
        ));
    }

    #[test]
    fn requests_are_well_formed() {
        let mut out = Vec::new();
        write_request(&mut out, "POST", "/tern/up?s=ab&n=0", "h:80", Some(b"xyz")).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("POST /tern/up?s=ab&n=0 HTTP/1.1\r\nHost: h:80\r\n"));
        assert!(text.contains("Content-Type: application/x-tern\r\n"));
        assert!(text.contains("Content-Length: 3\r\n"));
        assert!(text.ends_with("\r\n\r\nxyz"));
        let mut out = Vec::new();
        write_request(&mut out, "GET", "/tern/down?s=ab", "h:80", None).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("Content-Length"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn absolute_uris_through_a_proxy() {
        let rung = Rung::parse("http://node:8080/base").unwrap();
        let t = Target {
            rung: rung.clone(),
            options: TransportOptions::default().with_proxy("proxy:3128"),
            absolute: true,
            timeout: Duration::from_secs(1),
        };
        assert_eq!(t.uri("/tern/open"), "http://node:8080/base/tern/open");
        let t = Target {
            absolute: false,
            ..t
        };
        assert_eq!(t.uri("/tern/open"), "/base/tern/open");
    }
}
