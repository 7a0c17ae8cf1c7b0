//! The byte pipes under a [`Connection`](crate::Connection): native TCP, native in TLS,
//! WebSocket (over TCP or TLS) and the HTTP tunnel (over TCP or TLS), each optionally through an
//! HTTP forward proxy. They all carry the same frame stream (SPEC §12); the connection above
//! only writes bytes and reads bytes with a timeout.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::{ClientConnection, StreamOwned};
use tungstenite::{Message, WebSocket};

use crate::connection::ConnectionError;
use crate::endpoint::{Rung, TransportKind};
use crate::tls::{self, Fingerprint, TlsConfigs, TlsError, Trust};
use crate::tunnel::{HttpReader, Tunnel};

/// The WebSocket subprotocol of SPEC §12.
pub const WS_SUBPROTOCOL: &str = "tern.v1";

/// Settings shared by every rung: which TLS certificates to trust and an optional HTTP forward
/// proxy. Cheap to clone; the TLS configuration is built on first use and shared by the clones.
#[derive(Debug, Clone, Default)]
pub struct TransportOptions {
    trust: Trust,
    proxy: Option<String>,
    tls: Arc<Mutex<Option<TlsConfigs>>>,
}

impl TransportOptions {
    pub fn new() -> TransportOptions {
        TransportOptions::default()
    }

    /// Which server certificates TLS accepts.
    pub fn with_trust(mut self, trust: Trust) -> TransportOptions {
        self.trust = trust;
        // A new trust needs new configurations; clones made before keep the old ones.
        self.tls = Arc::default();
        self
    }

    /// Trusts the certificates of a PEM file (e.g. the dev certificate `DATA_DIR/tls/cert.pem`).
    pub fn with_ca_file(self, path: impl Into<std::path::PathBuf>) -> TransportOptions {
        self.with_trust(Trust::CaFile(path.into()))
    }

    /// Trusts only the certificate with this SHA-256 fingerprint.
    pub fn with_pin(self, pin: Fingerprint) -> TransportOptions {
        self.with_trust(Trust::Pin(pin))
    }

    /// Goes through an HTTP forward proxy (`host:port`): the tunnel over plain HTTP sends
    /// absolute-URI requests to it, every other transport asks it for a `CONNECT` tunnel.
    pub fn with_proxy(mut self, proxy: impl Into<String>) -> TransportOptions {
        self.proxy = Some(proxy.into());
        self
    }

    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    pub fn proxy(&self) -> Option<&str> {
        self.proxy.as_deref()
    }

    /// The TLS client configurations (built, and the CA file read, on the first call).
    pub fn tls_configs(&self) -> Result<TlsConfigs, TlsError> {
        let mut slot = self.tls.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = TlsConfigs::new(&self.trust)?;
        *slot = Some(c.clone());
        Ok(c)
    }
}

/// A byte stream: TCP, or TLS over TCP.
pub(crate) enum Stream {
    Tcp(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stream::Tcp(s) => f.debug_tuple("Tcp").field(s).finish(),
            Stream::Tls(s) => f.debug_tuple("Tls").field(&s.sock).finish(),
        }
    }
}

impl Stream {
    /// Sends TLS close_notify (nothing for plain TCP).
    fn close_notify(&mut self) {
        if let Stream::Tls(s) = self {
            s.conn.send_close_notify();
            let _ = s.conn.write_tls(&mut s.sock);
        }
    }

    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Tcp(s) => s,
            Stream::Tls(s) => &s.sock,
        }
    }

    /// Sets the read timeout of the socket (at least 1 ms: zero would mean "block forever").
    pub(crate) fn set_read_timeout(&self, t: Duration) -> std::io::Result<()> {
        self.tcp()
            .set_read_timeout(Some(t.max(Duration::from_millis(1))))
    }

    pub(crate) fn set_write_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        self.tcp()
            .set_write_timeout(t.map(|t| t.max(Duration::from_millis(1))))
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

pub(crate) fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

fn left(deadline: Instant) -> Result<Duration, ConnectionError> {
    let d = deadline.saturating_duration_since(Instant::now());
    if d.is_zero() {
        Err(ConnectionError::Timeout)
    } else {
        Ok(d)
    }
}

/// A TCP connection to `addr` (`host:port`) before `deadline`.
pub(crate) fn tcp_connect(addr: &str, deadline: Instant) -> Result<TcpStream, ConnectionError> {
    let mut last = None;
    for a in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&a, left(deadline)?) {
            Ok(s) => {
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) if is_timeout(&e) => ConnectionError::Timeout,
        Some(e) => e.into(),
        None => std::io::Error::new(ErrorKind::NotFound, format!("{addr}: no address")).into(),
    })
}

/// Asks an HTTP proxy for a `CONNECT` tunnel to `authority`.
fn proxy_connect(
    mut sock: TcpStream,
    authority: &str,
    deadline: Instant,
) -> Result<TcpStream, ConnectionError> {
    sock.set_write_timeout(Some(left(deadline)?))?;
    write!(
        sock,
        "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\nProxy-Connection: keep-alive\r\n\r\n"
    )?;
    let mut reader = HttpReader::new(Stream::Tcp(sock));
    let head = reader.read_head(deadline)?;
    if !(200..300).contains(&head.status) {
        return Err(ConnectionError::Http {
            status: head.status,
            message: format!("proxy refused CONNECT {authority}"),
        });
    }
    // A proxy does not send anything after its answer before we speak, so nothing is buffered.
    let (stream, rest) = reader.into_parts();
    if !rest.is_empty() {
        return Err(ConnectionError::Transport(
            "proxy sent data after its CONNECT answer".into(),
        ));
    }
    match stream {
        Stream::Tcp(s) => Ok(s),
        Stream::Tls(_) => Err(ConnectionError::Transport("proxy over TLS".into())),
    }
}

/// TLS over `sock`, handshake finished before `deadline`.
fn tls_handshake(
    mut sock: TcpStream,
    rung: &Rung,
    config: Arc<rustls::ClientConfig>,
    deadline: Instant,
) -> Result<Stream, ConnectionError> {
    let name = tls::server_name(rung.tls_name())?;
    let mut conn = ClientConnection::new(config, name).map_err(TlsError::from)?;
    while conn.is_handshaking() {
        let t = left(deadline)?;
        sock.set_read_timeout(Some(t))?;
        sock.set_write_timeout(Some(t))?;
        match conn.complete_io(&mut sock) {
            Ok(_) => {}
            Err(e) if is_timeout(&e) => return Err(ConnectionError::Timeout),
            // rustls reports handshake failures (bad certificate, alert from the server) as
            // InvalidData wrapping its own error; keep the message.
            Err(e) if e.kind() == ErrorKind::InvalidData => {
                return Err(ConnectionError::Tls(TlsError::Handshake(e.to_string())))
            }
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Err(ConnectionError::Eof),
            Err(e) => return Err(e.into()),
        }
    }
    sock.set_write_timeout(None)?;
    Ok(Stream::Tls(Box::new(StreamOwned::new(conn, sock))))
}

/// The byte stream of a rung: TCP to the server or through the proxy, then TLS if the rung
/// needs it. With a proxy and the plain tunnel, the stream goes to the proxy itself.
pub(crate) fn dial(
    rung: &Rung,
    options: &TransportOptions,
    deadline: Instant,
) -> Result<Stream, ConnectionError> {
    let authority = rung.authority();
    let sock = match options.proxy() {
        Some(proxy) if rung.kind == TransportKind::Tunnel => tcp_connect(proxy, deadline)?,
        Some(proxy) => proxy_connect(tcp_connect(proxy, deadline)?, &authority, deadline)?,
        None => tcp_connect(&authority, deadline)?,
    };
    if !rung.kind.uses_tls() {
        return Ok(Stream::Tcp(sock));
    }
    let configs = options.tls_configs()?;
    let config = if rung.kind == TransportKind::Tls {
        configs.native
    } else {
        configs.http
    };
    tls_handshake(sock, rung, config, deadline)
}

/// One transport, as the connection sees it.
pub(crate) enum Transport {
    /// Native frames over TCP or TLS.
    Stream(Stream),
    /// Binary WebSocket messages.
    Ws(Box<WebSocket<Stream>>),
    /// The HTTP tunnel.
    Tunnel(Box<Tunnel>),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Stream(s) => f.debug_tuple("Stream").field(s).finish(),
            Transport::Ws(ws) => f.debug_tuple("Ws").field(ws.get_ref()).finish(),
            Transport::Tunnel(t) => f.debug_tuple("Tunnel").field(t).finish(),
        }
    }
}

fn ws_error(e: tungstenite::Error) -> ConnectionError {
    match e {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            ConnectionError::Eof
        }
        tungstenite::Error::Io(e) if is_timeout(&e) => ConnectionError::Timeout,
        tungstenite::Error::Io(e) if e.kind() == ErrorKind::UnexpectedEof => ConnectionError::Eof,
        tungstenite::Error::Io(e) => ConnectionError::Io(e),
        tungstenite::Error::Http(resp) => ConnectionError::Http {
            status: resp.status().as_u16(),
            message: "WebSocket upgrade refused".into(),
        },
        e => ConnectionError::Transport(format!("WebSocket: {e}")),
    }
}

fn ws_handshake(
    stream: Stream,
    rung: &Rung,
    deadline: Instant,
) -> Result<WebSocket<Stream>, ConnectionError> {
    use tungstenite::client::IntoClientRequest;
    let t = left(deadline)?;
    stream.set_read_timeout(t)?;
    stream.set_write_timeout(Some(t))?;
    let url = format!(
        "{}://{}{}",
        if rung.kind.uses_tls() { "wss" } else { "ws" },
        rung.authority(),
        rung.path
    );
    let mut request = url.as_str().into_client_request().map_err(ws_error)?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        tungstenite::http::HeaderValue::from_static(WS_SUBPROTOCOL),
    );
    match tungstenite::client::client(request, stream) {
        Ok((ws, _response)) => {
            ws.get_ref().set_write_timeout(None)?;
            Ok(ws)
        }
        Err(tungstenite::HandshakeError::Interrupted(_)) => Err(ConnectionError::Timeout),
        Err(tungstenite::HandshakeError::Failure(e)) => Err(ws_error(e)),
    }
}

impl Transport {
    /// Opens the transport of `rung`; everything up to (not including) HELLO fits in `timeout`.
    pub(crate) fn open(
        rung: &Rung,
        options: &TransportOptions,
        timeout: Duration,
    ) -> Result<Transport, ConnectionError> {
        let deadline = Instant::now() + timeout;
        match rung.kind {
            TransportKind::Native | TransportKind::Tls => {
                Ok(Transport::Stream(dial(rung, options, deadline)?))
            }
            TransportKind::Ws | TransportKind::Wss => {
                let stream = dial(rung, options, deadline)?;
                Ok(Transport::Ws(Box::new(ws_handshake(
                    stream, rung, deadline,
                )?)))
            }
            TransportKind::Tunnel | TransportKind::TunnelTls => Ok(Transport::Tunnel(Box::new(
                Tunnel::open(rung, options, timeout)?,
            ))),
        }
    }

    /// Writes bytes (whole frames, except when a test sends garbage).
    pub(crate) fn write_all(&mut self, bytes: &[u8]) -> Result<(), ConnectionError> {
        match self {
            Transport::Stream(s) => {
                s.write_all(bytes)?;
                s.flush()?;
                Ok(())
            }
            Transport::Ws(ws) => ws.send(Message::binary(bytes.to_vec())).map_err(ws_error),
            Transport::Tunnel(t) => t.write(bytes),
        }
    }

    /// Appends the bytes that arrive within `timeout` to `buf`; returns how many (0: none in
    /// time). The end of the stream is [`ConnectionError::Eof`].
    pub(crate) fn read_some(
        &mut self,
        buf: &mut Vec<u8>,
        timeout: Duration,
    ) -> Result<usize, ConnectionError> {
        match self {
            Transport::Stream(s) => {
                s.set_read_timeout(timeout)?;
                let mut chunk = [0u8; 16 * 1024];
                loop {
                    match s.read(&mut chunk) {
                        Ok(0) => return Err(ConnectionError::Eof),
                        Ok(n) => {
                            buf.extend_from_slice(&chunk[..n]);
                            return Ok(n);
                        }
                        Err(e) if is_timeout(&e) => return Ok(0),
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        // A TLS peer that closes without close_notify.
                        Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
                            return Err(ConnectionError::Eof)
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            Transport::Ws(ws) => {
                let deadline = Instant::now() + timeout;
                loop {
                    let Ok(t) = left(deadline) else {
                        return Ok(0);
                    };
                    ws.get_ref().set_read_timeout(t)?;
                    match ws.read() {
                        Ok(Message::Binary(b)) => {
                            buf.extend_from_slice(&b);
                            if !b.is_empty() {
                                return Ok(b.len());
                            }
                        }
                        Ok(Message::Text(_)) => {
                            return Err(ConnectionError::Transport(
                                "WebSocket text message (tern frames travel in binary messages)"
                                    .into(),
                            ))
                        }
                        // tungstenite answers pings itself.
                        Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                        Ok(Message::Close(_)) => return Err(ConnectionError::Eof),
                        Err(e) => match ws_error(e) {
                            ConnectionError::Timeout => return Ok(0),
                            e => return Err(e),
                        },
                    }
                }
            }
            Transport::Tunnel(t) => t.read_some(buf, timeout),
        }
    }

    /// Ends the transport in the layers' own way first: a WebSocket close message and a TLS
    /// close_notify, so a peer or proxy in between sees a clean end rather than a reset;
    /// then as [`Transport::shutdown`]. Best effort: the connection is going away either way.
    pub(crate) fn close(&mut self) {
        match self {
            Transport::Stream(s) => s.close_notify(),
            Transport::Ws(ws) => {
                let _ = ws.close(None);
                let _ = ws.flush();
                ws.get_mut().close_notify();
            }
            Transport::Tunnel(_) => {}
        }
        self.shutdown();
    }

    /// Ends the transport without waiting for the peer (the tunnel sends `/tern/close`).
    pub(crate) fn shutdown(&self) {
        match self {
            Transport::Stream(s) => {
                let _ = s.tcp().shutdown(Shutdown::Both);
            }
            Transport::Ws(ws) => {
                let _ = ws.get_ref().tcp().shutdown(Shutdown::Both);
            }
            Transport::Tunnel(t) => t.shutdown(),
        }
    }

    /// The tunnel's session id, once the server has issued it.
    pub(crate) fn tunnel_session(&self) -> Option<String> {
        match self {
            Transport::Tunnel(t) => t.session_id(),
            _ => None,
        }
    }
}
