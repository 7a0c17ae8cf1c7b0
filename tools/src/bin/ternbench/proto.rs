//! A minimal, fast tern client for load generation: connect from a chosen source address over
//! one transport of SPEC §12 — native, TLS, WebSocket over TCP or TLS, the HTTP tunnel over TCP
//! or TLS — then HELLO/WELCOME and frames in and out over tokio. Deliberately not the SDK: the
//! load tool must not add retransmission timers, threads or local state that would blur what
//! the node does, and it must stay cheap, since it shares the machine with the node.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use rustls::pki_types::ServerName;
use serde::{Deserialize, Serialize};
use tern_protocol::{
    decode, Body, Capabilities, Frame, Hello, ABS_MAX_BODY, DEFAULT_MAX_BODY, PROTOCOL,
};
use tern_tools::endpoint::WS_PATH;
use tern_tools::transport::WS_SUBPROTOCOL;
use tern_tools::tunnel::{parse_head, BodyFraming, ResponseHead, CONTENT_TYPE, SESSION_HEADER};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;

use crate::tls::{client_config, Suite};

/// Smallest free space a read is given.
const READ_MIN: usize = 2048;
/// Largest WebSocket frame or HTTP body accepted from the node.
const MAX_MESSAGE: u64 = 64 << 20;
/// Largest `up` body: frames queued while a request is in flight go out together up to this.
const MAX_UP: usize = 1 << 20;

/// How load clients reach the node (SPEC §12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// Native frames over TCP.
    Native,
    /// Native frames in TLS (ALPN tern/1).
    Tls,
    /// Binary WebSocket messages over TCP.
    Ws,
    /// Binary WebSocket messages in TLS (ALPN http/1.1).
    Wss,
    /// The HTTP tunnel over TCP: a chunked downstream, `up` POSTs upstream.
    Tunnel,
    /// The HTTP tunnel in TLS.
    TunnelTls,
}

impl Transport {
    pub fn uses_tls(self) -> bool {
        matches!(self, Transport::Tls | Transport::Wss | Transport::TunnelTls)
    }

    /// The key of the node's `ports.json` whose listener serves this transport.
    pub fn port_key(self) -> &'static str {
        match self {
            Transport::Native => "native",
            Transport::Tls | Transport::Wss | Transport::TunnelTls => "tls",
            Transport::Ws | Transport::Tunnel => "http",
        }
    }

    /// The node's default address for it (SPEC §12 "Listeners").
    pub fn default_target(self) -> SocketAddr {
        let port = match self.port_key() {
            "tls" => 14443,
            "http" => 8080,
            _ => 14000,
        };
        SocketAddr::from(([127, 0, 0, 1], port))
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    dev: &'a str,
    exp: u64,
}

/// Mints an HS256 token the node accepts (claims `sub`, `dev`, `exp`).
pub fn token(secret: &[u8], user: &str, device: &str) -> Result<String> {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 24 * 3600;
    let claims = Claims {
        sub: user,
        dev: device,
        exp,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .context("minting a token")
}

/// Connects from `source` (port chosen by the kernel) to `target`.
pub async fn connect(source: IpAddr, target: SocketAddr) -> Result<TcpStream> {
    let sock = if target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.bind(SocketAddr::new(source, 0))
        .with_context(|| format!("binding {source}"))?;
    let s = sock
        .connect(target)
        .await
        .with_context(|| format!("connecting to {target} from {source}"))?;
    s.set_nodelay(true)?;
    Ok(s)
}

type Rd = Box<dyn AsyncRead + Unpin + std::marker::Send>;
type Wr = Box<dyn AsyncWrite + Unpin + std::marker::Send>;

/// Reads into the spare capacity of `buf`, at least `READ_MIN` bytes of it; 0 at the end of the
/// stream. A TLS peer that closes without close_notify is an end of stream too: the node may
/// just drop the socket. Buffers start small because an idle run holds thousands of them (and
/// touching fresh pages costs the client CPU that the node would otherwise get); a busy one
/// grows as `Vec` does.
async fn read_some(rd: &mut Rd, buf: &mut Vec<u8>) -> Result<usize> {
    if buf.capacity() - buf.len() < READ_MIN {
        buf.reserve(READ_MIN.max(buf.len()));
    }
    match rd.read_buf(buf).await {
        Ok(n) => Ok(n),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// How one worker reaches the node: the transport, the address and, for TLS, one client
/// configuration whose session cache every connection of the worker shares (resumption).
pub struct Dialer {
    target: SocketAddr,
    transport: Transport,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// The `Host` of HTTP requests.
    host: String,
    pub tls_full: AtomicU64,
    pub tls_resumed: AtomicU64,
    /// The cipher suite the node chose (first TLS connection).
    pub tls_suite: OnceLock<String>,
}

impl Dialer {
    pub fn new(
        target: SocketAddr,
        transport: Transport,
        ca: Option<&Path>,
        tls_name: Option<&str>,
        suite: Option<Suite>,
        resume: bool,
    ) -> Result<Dialer> {
        let tls = if transport.uses_tls() {
            let ca = ca.context("TLS needs a certificate to trust: pass --ca or --data-dir")?;
            let config = client_config(ca, transport == Transport::Tls, suite, resume)?;
            let ip = target.ip().to_string();
            let name = tern_tools::tls::server_name(tls_name.unwrap_or(&ip))?;
            Some((TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        Ok(Dialer {
            target,
            transport,
            tls,
            host: target.to_string(),
            tls_full: AtomicU64::new(0),
            tls_resumed: AtomicU64::new(0),
            tls_suite: OnceLock::new(),
        })
    }

    /// TCP from `source`, then TLS if the transport needs it; `first` is sent as the first
    /// bytes of the stream. Over TLS they are queued before the handshake, so rustls sends them
    /// with the client's Finished: one segment and one wakeup of the node fewer per connection
    /// than writing them after the handshake.
    async fn stream(&self, source: IpAddr, first: &[u8]) -> Result<(Rd, Wr)> {
        self.stream_to(source, self.target, first).await
    }

    async fn stream_to(
        &self,
        source: IpAddr,
        target: SocketAddr,
        first: &[u8],
    ) -> Result<(Rd, Wr)> {
        let mut tcp = connect(source, target).await?;
        let Some((connector, name)) = &self.tls else {
            if !first.is_empty() {
                tcp.write_all(first).await?;
            }
            let (r, w) = tcp.into_split();
            return Ok((Box::new(r), Box::new(w)));
        };
        let mut queued = Ok(());
        let s = connector
            .connect_with(name.clone(), tcp, |c| {
                if !first.is_empty() {
                    queued = std::io::Write::write_all(&mut c.writer(), first);
                }
            })
            .await
            .context("TLS handshake")?;
        queued.context("queueing the first bytes")?;
        let tls = s.get_ref().1;
        if let Some(suite) = tls.negotiated_cipher_suite() {
            let _ = self.tls_suite.set(format!("{:?}", suite.suite()));
        }
        let counter = match tls.handshake_kind() {
            Some(rustls::HandshakeKind::Resumed) => &self.tls_resumed,
            _ => &self.tls_full,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let (r, w) = tokio::io::split(s);
        Ok((Box::new(r), Box::new(w)))
    }
}

/// What stands between the wire bytes and the frame stream.
enum Unwrap {
    /// Native and TLS: the wire bytes are the frames.
    None,
    /// WebSocket: frames are the payloads of binary messages.
    Ws,
    /// HTTP tunnel: frames are the data of a chunked response body.
    Chunked(tern_tools::tunnel::ChunkedDecoder),
}

/// Reads frames from one half of a connection.
pub struct FrameReader {
    rd: Rd,
    unwrap: Unwrap,
    /// Wire bytes not unwrapped yet (WebSocket and tunnel).
    raw: Vec<u8>,
    /// The frame stream; frames start at `start`.
    buf: Vec<u8>,
    start: usize,
    eof: bool,
    /// The unused write half of a tunnel's downstream connection: dropping a tokio TCP write
    /// half sends FIN, which the node rightly takes as the client leaving.
    _hold: Option<Wr>,
}

impl FrameReader {
    fn new(rd: Rd, unwrap: Unwrap, raw: Vec<u8>) -> Self {
        FrameReader {
            rd,
            unwrap,
            raw,
            buf: Vec::new(),
            start: 0,
            eof: false,
            _hold: None,
        }
    }

    /// The next frame, owned; `None` at end of stream.
    pub async fn next(&mut self) -> Result<Option<Frame<'static>>> {
        self.next_with(|f| f.clone().into_owned()).await
    }

    /// Hands the next frame to `f` without copying it (room members read a million frames a
    /// second, and an owned frame is an allocation and a copy each); `None` at end of stream.
    pub async fn next_with<R>(&mut self, f: impl FnOnce(&Frame<'_>) -> R) -> Result<Option<R>> {
        loop {
            match decode(&self.buf[self.start..], ABS_MAX_BODY) {
                Ok(Some((frame, used))) => {
                    let out = f(&frame);
                    self.start += used;
                    if self.start == self.buf.len() {
                        self.buf.clear();
                        self.start = 0;
                    }
                    return Ok(Some(out));
                }
                Ok(None) => {}
                Err(e) => bail!("node sent an undecodable frame: {e}"),
            }
            if self.eof {
                return Ok(None);
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            self.eof = !self.fill().await?;
        }
    }

    /// Appends frame-stream bytes to `buf`; `false` at the end of the stream.
    async fn fill(&mut self) -> Result<bool> {
        loop {
            // Bytes already received (after an HTTP head, or a partial WebSocket frame) first.
            let before = self.buf.len();
            match &mut self.unwrap {
                Unwrap::None => return Ok(read_some(&mut self.rd, &mut self.buf).await? > 0),
                Unwrap::Ws => {
                    if ws_unwrap(&mut self.raw, &mut self.buf)? {
                        return Ok(false);
                    }
                }
                Unwrap::Chunked(d) => {
                    let used = d
                        .feed(&self.raw, &mut self.buf)
                        .map_err(|e| anyhow!("tunnel downstream: {e}"))?;
                    self.raw.drain(..used);
                    if d.is_done() {
                        return Ok(self.buf.len() > before);
                    }
                }
            }
            if self.buf.len() > before {
                return Ok(true);
            }
            if read_some(&mut self.rd, &mut self.raw).await? == 0 {
                return Ok(false);
            }
        }
    }
}

/// Moves the payloads of the complete WebSocket frames at the start of `raw` to `out`; `true`
/// once a close frame is seen.
fn ws_unwrap(raw: &mut Vec<u8>, out: &mut Vec<u8>) -> Result<bool> {
    let mut pos = 0;
    let mut closed = false;
    while let Some(b) = raw.get(pos..).filter(|b| b.len() >= 2) {
        let opcode = b[0] & 0x0f;
        let (len, mut at) = match b[1] & 0x7f {
            126 => match b.get(2..4) {
                Some(l) => (u64::from(u16::from_be_bytes([l[0], l[1]])), 4),
                None => break,
            },
            127 => match b.get(2..10).and_then(|l| <[u8; 8]>::try_from(l).ok()) {
                Some(l) => (u64::from_be_bytes(l), 10),
                None => break,
            },
            n => (u64::from(n), 2),
        };
        if len > MAX_MESSAGE {
            bail!("WebSocket frame of {len} bytes");
        }
        // A server must not mask; tolerate it anyway rather than misread the stream.
        let mask = if b[1] & 0x80 != 0 {
            let Some(k) = b.get(at..at + 4) else { break };
            at += 4;
            Some([k[0], k[1], k[2], k[3]])
        } else {
            None
        };
        let Some(payload) = b.get(at..at + len as usize) else {
            break;
        };
        match opcode {
            // Continuation or binary: a frame may span messages, so payloads just concatenate.
            0 | 2 => {
                let s = out.len();
                out.extend_from_slice(payload);
                if let Some(k) = mask {
                    for (i, x) in out[s..].iter_mut().enumerate() {
                        *x ^= k[i & 3];
                    }
                }
            }
            1 => bail!("the node sent a WebSocket text message"),
            8 => {
                closed = true;
                pos += at + len as usize;
                break;
            }
            // The node does not ping (its heartbeats are tern PINGs inside); pongs need nothing.
            9 | 10 => {}
            op => bail!("WebSocket opcode {op:#x}"),
        }
        pos += at + len as usize;
    }
    raw.drain(..pos);
    Ok(closed)
}

/// Frames as one masked binary WebSocket message (RFC 6455 §5.2, §5.3).
///
/// Hand-rolled rather than tokio-tungstenite: the load tool sends every batch of frames as one
/// message without a per-message allocation or a `Sink` layer, keeping the client's share of
/// the two cores it shares with the node small; the client side of the framing is a header and
/// a XOR mask.
fn ws_frame(payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.push(0x82);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if let Ok(l) = u16::try_from(len) {
        out.push(0x80 | 126);
        out.extend_from_slice(&l.to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let key: [u8; 4] = rand::random();
    out.extend_from_slice(&key);
    let s = out.len();
    out.extend_from_slice(payload);
    for chunk in out[s..].chunks_mut(4) {
        for (x, k) in chunk.iter_mut().zip(key) {
            *x ^= k;
        }
    }
}

/// Where written frames go.
enum Sink {
    Stream(Wr),
    Ws { wr: Wr, wire: Vec<u8> },
    Tunnel(Up),
}

/// Writes frames, batching into one buffer (one write, message or `up` body) per flush.
pub struct FrameWriter {
    sink: Sink,
    buf: Vec<u8>,
}

impl FrameWriter {
    fn new(sink: Sink) -> Self {
        FrameWriter {
            sink,
            buf: Vec::with_capacity(4096),
        }
    }

    pub fn queue(&mut self, f: &Frame<'_>) -> Result<()> {
        f.encode(&mut self.buf).map_err(|e| anyhow!("{e}"))?;
        Ok(())
    }

    /// Sends what was queued. Over the tunnel this hands the bytes to the session's upstream
    /// task and returns at once: they go in the next `up` body.
    pub async fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        match &mut self.sink {
            Sink::Stream(w) => {
                w.write_all(&self.buf).await?;
                w.flush().await?;
            }
            Sink::Ws { wr, wire } => {
                ws_frame(&self.buf, wire);
                wr.write_all(wire).await?;
                wr.flush().await?;
            }
            Sink::Tunnel(up) => {
                let bytes = std::mem::replace(&mut self.buf, Vec::with_capacity(4096));
                return up.push(bytes);
            }
        }
        self.buf.clear();
        Ok(())
    }

    pub async fn send(&mut self, f: &Frame<'_>) -> Result<()> {
        self.queue(f)?;
        self.flush().await
    }
}

/// An authenticated connection.
pub struct Conn {
    pub reader: FrameReader,
    pub writer: FrameWriter,
}

/// Connects over the dialer's transport and completes the handshake.
pub async fn login(
    d: &Arc<Dialer>,
    source: IpAddr,
    token: &str,
    device: &str,
    resume: u64,
) -> Result<Conn> {
    Ok(login_at(d, source, d.target, token, device, resume)
        .await?
        .0)
}

/// [`login`] entering the cluster at `entry` instead of the dialer's target; also returns the
/// address of the node that accepted the HELLO (after any REDIRECT).
pub async fn login_at(
    d: &Arc<Dialer>,
    source: IpAddr,
    entry: SocketAddr,
    token: &str,
    device: &str,
    resume: u64,
) -> Result<(Conn, SocketAddr)> {
    let hello = Frame::new(
        1,
        Body::Hello(Hello {
            protocol: PROTOCOL,
            capabilities: Capabilities::ALL,
            max_frame: DEFAULT_MAX_BODY,
            token: token.into(),
            device: device.into(),
            resume_inbox_seq: resume,
            client: "ternbench".into(),
        }),
    );
    let mut target = entry;
    // A cluster node that does not own the user answers REDIRECT (SPEC §6); native clients
    // follow it, so a run can be pointed at any node of a cluster.
    for _hop in 0..MAX_REDIRECTS {
        let mut c = match d.transport {
            Transport::Native | Transport::Tls => {
                let mut first = Vec::new();
                hello.encode(&mut first).map_err(|e| anyhow!("{e}"))?;
                let (rd, wr) = d.stream_to(source, target, &first).await?;
                Conn {
                    reader: FrameReader::new(rd, Unwrap::None, Vec::new()),
                    writer: FrameWriter::new(Sink::Stream(wr)),
                }
            }
            Transport::Ws | Transport::Wss => {
                let mut c = ws_open(d, source).await?;
                c.writer.send(&hello).await?;
                c
            }
            Transport::Tunnel | Transport::TunnelTls => tunnel_open(d, source, &hello).await?,
        };
        match c.reader.next().await? {
            Some(Frame {
                body: Body::Welcome(_),
                ..
            }) => return Ok((c, target)),
            Some(Frame {
                body: Body::Redirect(r),
                ..
            }) => target = redirect_target(d.transport, &r)?,
            Some(Frame {
                body: Body::Error(e),
                ..
            }) => bail!("HELLO refused: {} {}", e.code, e.message),
            Some(other) => bail!("expected WELCOME, got {}", other.frame_type()),
            None => bail!("node closed the connection during the handshake"),
        }
    }
    bail!("more than {MAX_REDIRECTS} REDIRECTs in a row")
}

/// REDIRECTs followed for one login: one is the normal case; more mean ownership is moving.
const MAX_REDIRECTS: usize = 3;

/// Where a REDIRECT sends a native client. Other transports are not followed: every dev node
/// has its own certificate, and the WebSocket and tunnel dialers are bound to one target.
fn redirect_target(transport: Transport, r: &tern_protocol::Redirect<'_>) -> Result<SocketAddr> {
    if transport != Transport::Native {
        bail!("REDIRECT is followed over the native transport only");
    }
    let a = r
        .addrs
        .iter()
        .find(|a| a.transport == tern_protocol::Transport::NATIVE)
        .context("REDIRECT without a native address")?;
    a.addr
        .parse()
        .with_context(|| format!("REDIRECT to a bad address {:?}", a.addr))
}

/// Reads a response head; the bytes after it stay in `buf`.
async fn read_head(rd: &mut Rd, buf: &mut Vec<u8>) -> Result<ResponseHead> {
    loop {
        if let Some((head, len)) = parse_head(buf)? {
            buf.drain(..len);
            if (100..200).contains(&head.status) && head.status != 101 {
                continue;
            }
            return Ok(head);
        }
        if read_some(rd, buf).await? == 0 {
            bail!("the node closed the connection before its HTTP answer");
        }
    }
}

/// Reads a whole (short) response body; what follows it stays in `buf`.
async fn read_body(rd: &mut Rd, buf: &mut Vec<u8>, head: &ResponseHead) -> Result<Vec<u8>> {
    match head.framing()? {
        BodyFraming::Length(n) => {
            if n > MAX_MESSAGE {
                bail!("HTTP body of {n} bytes");
            }
            let n = n as usize;
            while buf.len() < n {
                if read_some(rd, buf).await? == 0 {
                    bail!("the node closed the connection within an HTTP body");
                }
            }
            Ok(buf.drain(..n).collect())
        }
        BodyFraming::Chunked(mut d) => {
            let mut out = Vec::new();
            loop {
                let used = d
                    .feed(buf, &mut out)
                    .map_err(|e| anyhow!("chunked body: {e}"))?;
                buf.drain(..used);
                if d.is_done() {
                    return Ok(out);
                }
                if out.len() as u64 > MAX_MESSAGE || read_some(rd, buf).await? == 0 {
                    bail!("chunked HTTP body cut short or too long");
                }
            }
        }
        BodyFraming::UntilEof => {
            while read_some(rd, buf).await? > 0 {
                if buf.len() as u64 > MAX_MESSAGE {
                    bail!("HTTP body too long");
                }
            }
            Ok(std::mem::take(buf))
        }
    }
}

/// The WebSocket upgrade (RFC 6455 §4.1) on `WS_PATH` with the `tern.v1` subprotocol.
async fn ws_open(d: &Dialer, source: IpAddr) -> Result<Conn> {
    let (mut rd, mut wr) = d.stream(source, &[]).await?;
    let key = tungstenite::handshake::client::generate_key();
    let req = format!(
        "GET {WS_PATH} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: {WS_SUBPROTOCOL}\r\n\r\n",
        d.host
    );
    wr.write_all(req.as_bytes()).await?;
    wr.flush().await?;
    let mut raw = Vec::new();
    let head = read_head(&mut rd, &mut raw).await?;
    if head.status != 101 {
        bail!(
            "WebSocket upgrade refused: HTTP {} {}",
            head.status,
            head.reason
        );
    }
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    if head.header("Sec-WebSocket-Accept").map(str::trim) != Some(accept.as_str()) {
        bail!("WebSocket upgrade: wrong Sec-WebSocket-Accept");
    }
    if head.header("Sec-WebSocket-Protocol").map(str::trim) != Some(WS_SUBPROTOCOL) {
        bail!("WebSocket upgrade: the node did not take the {WS_SUBPROTOCOL} subprotocol");
    }
    Ok(Conn {
        reader: FrameReader::new(rd, Unwrap::Ws, raw),
        writer: FrameWriter::new(Sink::Ws {
            wr,
            wire: Vec::with_capacity(4096),
        }),
    })
}

/// `POST /tern/open?mode=stream` with HELLO: the response stays open as the chunked
/// downstream; upstream frames go through a task posting `up` requests on its own connection.
async fn tunnel_open(d: &Arc<Dialer>, source: IpAddr, hello: &Frame<'_>) -> Result<Conn> {
    let (mut rd, mut wr) = d.stream(source, &[]).await?;
    let mut body = Vec::new();
    hello.encode(&mut body).map_err(|e| anyhow!("{e}"))?;
    let mut req = format!(
        "POST /tern/open?mode=stream HTTP/1.1\r\nHost: {}\r\nContent-Type: {CONTENT_TYPE}\r\n\
         Accept: {CONTENT_TYPE}\r\nContent-Length: {}\r\n\r\n",
        d.host,
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    wr.write_all(&req).await?;
    wr.flush().await?;
    let mut raw = Vec::new();
    let head = read_head(&mut rd, &mut raw).await?;
    match head.status {
        200 => {}
        401 => {
            // The body is the ERROR (and CLOSE) the node would have sent natively.
            let body = read_body(&mut rd, &mut raw, &head).await?;
            if let Ok(Some((
                Frame {
                    body: Body::Error(e),
                    ..
                },
                _,
            ))) = decode(&body, ABS_MAX_BODY)
            {
                bail!("HELLO refused: {} {}", e.code, e.message);
            }
            bail!("tunnel open refused (401) without an ERROR frame");
        }
        status => {
            let body = read_body(&mut rd, &mut raw, &head)
                .await
                .unwrap_or_default();
            bail!(
                "tunnel open: HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)]).trim()
            );
        }
    }
    let sid = head
        .header(SESSION_HEADER)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .with_context(|| format!("tunnel open: no {SESSION_HEADER} header"))?
        .to_owned();
    let BodyFraming::Chunked(decoder) = head.framing()? else {
        bail!("tunnel open: the downstream is not chunked");
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let failed = Arc::new(Mutex::new(None));
    tokio::spawn(up_task(Arc::clone(d), source, sid, rx, Arc::clone(&failed)));
    let mut reader = FrameReader::new(rd, Unwrap::Chunked(decoder), raw);
    reader._hold = Some(wr);
    Ok(Conn {
        reader,
        writer: FrameWriter::new(Sink::Tunnel(Up { tx, failed })),
    })
}

/// The writer's end of a tunnel session's upstream task.
struct Up {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    /// Why the task stopped, if it failed.
    failed: Arc<Mutex<Option<String>>>,
}

impl Up {
    fn push(&self, bytes: Vec<u8>) -> Result<()> {
        if self.tx.send(bytes).is_ok() {
            return Ok(());
        }
        let why = self
            .failed
            .lock()
            .ok()
            .and_then(|f| f.clone())
            .unwrap_or_else(|| "ended".into());
        bail!("tunnel upstream: {why}")
    }
}

/// A keep-alive HTTP connection for `up` requests.
struct HttpConn {
    rd: Rd,
    wr: Wr,
    buf: Vec<u8>,
}

/// Posts what the writer queued, one `up` request at a time (SPEC §12 "Upstream order"); what
/// arrives while a request is in flight goes in the next body — that batching is what lets a
/// tunnel carry a high message rate at all.
async fn up_task(
    d: Arc<Dialer>,
    source: IpAddr,
    sid: String,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    failed: Arc<Mutex<Option<String>>>,
) {
    let mut conn = None;
    let mut n = 0u64;
    let mut req = Vec::new();
    while let Some(mut body) = rx.recv().await {
        while body.len() < MAX_UP {
            match rx.try_recv() {
                Ok(more) => body.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if let Err(e) = post_up(&d, source, &mut conn, &sid, n, &body, &mut req).await {
            if let Ok(mut f) = failed.lock() {
                *f = Some(format!("{e:#}"));
            }
            return;
        }
        n += 1;
    }
}

async fn post_up(
    d: &Dialer,
    source: IpAddr,
    conn: &mut Option<HttpConn>,
    sid: &str,
    n: u64,
    body: &[u8],
    req: &mut Vec<u8>,
) -> Result<()> {
    req.clear();
    req.extend_from_slice(
        format!(
            "POST /tern/up?s={sid}&n={n} HTTP/1.1\r\nHost: {}\r\nContent-Type: {CONTENT_TYPE}\r\n\
             Content-Length: {}\r\n\r\n",
            d.host,
            body.len()
        )
        .as_bytes(),
    );
    req.extend_from_slice(body);
    let mut attempt = 0;
    loop {
        attempt += 1;
        if conn.is_none() {
            let (rd, wr) = d.stream(source, &[]).await?;
            *conn = Some(HttpConn {
                rd,
                wr,
                buf: Vec::new(),
            });
        }
        let c = conn.as_mut().context("up connection")?;
        let answer = async {
            c.wr.write_all(req).await?;
            c.wr.flush().await?;
            let head = read_head(&mut c.rd, &mut c.buf).await?;
            read_body(&mut c.rd, &mut c.buf, &head).await?;
            anyhow::Ok(head)
        }
        .await;
        match answer {
            Ok(head) if (200..300).contains(&head.status) => {
                if !head.keep_alive() {
                    *conn = None;
                }
                return Ok(());
            }
            Ok(head) => bail!("up #{n}: HTTP {} {}", head.status, head.reason),
            // A keep-alive connection the node had closed: once more on a new one, same `n`
            // (if the first went through, the node answers the repeat with 204 and ignores it).
            Err(_) if attempt == 1 => *conn = None,
            Err(e) => return Err(e.context(format!("up #{n}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ws_frames_round_trip_through_the_unwrapper() {
        for len in [0usize, 5, 125, 126, 1000, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut wire = Vec::new();
            ws_frame(&payload, &mut wire);
            assert_eq!(wire[0], 0x82);
            assert_ne!(wire[1] & 0x80, 0, "client frames are masked");
            // Split anywhere: nothing comes out until the frame is whole.
            let mut raw = wire[..wire.len() - 1].to_vec();
            let mut out = Vec::new();
            assert!(!ws_unwrap(&mut raw, &mut out).unwrap());
            assert!(len == 0 || out.is_empty());
            raw.push(*wire.last().unwrap());
            assert!(!ws_unwrap(&mut raw, &mut out).unwrap());
            assert_eq!(out, payload);
            assert!(raw.is_empty());
        }
    }

    #[test]
    fn ws_unwrap_skips_pings_and_stops_at_close() {
        let mut raw = vec![0x89, 0x01, b'p', 0x02, 0x02, b'a', b'b', 0x80, 0x01, b'c'];
        raw.extend_from_slice(&[0x88, 0x00, 0x82, 0x01, b'z']);
        let mut out = Vec::new();
        assert!(ws_unwrap(&mut raw, &mut out).unwrap());
        assert_eq!(out, b"abc");
        assert!(ws_unwrap(&mut vec![0x81, 0x01, b'x'], &mut out).is_err());
    }
}
