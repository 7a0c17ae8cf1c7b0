//! What a connection reads its frames from and writes them to: a plain TCP socket (the native
//! fast path), a socket with TLS and/or WebSocket layers, or an HTTP tunnel session whose bytes
//! arrive and leave through HTTP requests served elsewhere ([`crate::tunnel`]).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::rc::Rc;

use bytes::Bytes;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::pool::BufPool;
use crate::server::ConnShared;
use crate::transport::tls::TlsLayer;
use crate::transport::ws::WsLayer;

/// A socket with the layers between its bytes and the frame stream.
#[derive(Debug)]
pub struct Wire {
    pub stream: TcpStream,
    pub tls: Option<TlsLayer>,
    pub ws: Option<WsLayer>,
    /// Layer output held back to go out with the answer to the request that came with it (see
    /// [`Wire::read_first`]); every write sends it first, and [`Link::flush_held`] before a
    /// connection waits.
    held: Vec<u8>,
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::other(e)
}

impl Wire {
    pub fn plain(stream: TcpStream) -> Wire {
        Wire::new(stream, None)
    }

    pub fn new(stream: TcpStream, tls: Option<TlsLayer>) -> Wire {
        Wire {
            stream,
            tls,
            ws: None,
            held: Vec::new(),
        }
    }

    /// Reads once from the socket and appends the bytes it carries for the layer above (after
    /// TLS and WebSocket) to `app`; answers the layers need (handshake, alerts, pongs) are
    /// written before it returns. `Ok(false)` once the peer has closed.
    pub async fn read_into(&mut self, app: &mut Vec<u8>, pool: &BufPool) -> io::Result<bool> {
        self.read_layered(app, pool, false).await
    }

    /// As [`Wire::read_into`], but when the read also brought the first bytes for the layer
    /// above, the layer's output (a TLS 1.3 session ticket after the client's Finished) is held
    /// and leaves with the answer (WELCOME): one segment and one wakeup of the client fewer per
    /// TLS connection. The caller must write or [`Link::flush_held`] before waiting for input.
    pub async fn read_first(&mut self, app: &mut Vec<u8>, pool: &BufPool) -> io::Result<bool> {
        self.read_layered(app, pool, true).await
    }

    async fn read_layered(
        &mut self,
        app: &mut Vec<u8>,
        pool: &BufPool,
        hold: bool,
    ) -> io::Result<bool> {
        self.flush(pool).await?;
        if hold {
            // The front door waits for the client's next flight without a buffer: in a storm
            // of handshakes, buffers held over those waits would outnumber the pool (and be
            // allocated and freed by the thousand). Connections already waited for readiness.
            self.stream.readable(false).await?;
        }
        let buf = pool.take();
        let (res, buf) = self.stream.read(buf).await;
        let n = match res {
            Ok(n) => n,
            Err(e) => {
                pool.put(buf);
                return Err(e);
            }
        };
        if n == 0 {
            pool.put(buf);
            return Ok(false);
        }
        let mut out = pool.take();
        let before = app.len();
        let absorbed = self.absorb(&buf, app, &mut out);
        pool.put(buf);
        if hold && app.len() > before && !out.is_empty() && absorbed.is_ok() {
            self.held = out;
            return absorbed;
        }
        self.send(out, pool).await?;
        absorbed
    }

    /// Sends held layer output, if any.
    pub async fn flush(&mut self, pool: &BufPool) -> io::Result<()> {
        if self.held.is_empty() {
            return Ok(());
        }
        let out = pool.take();
        self.send(out, pool).await
    }

    /// Passes wire bytes through the layers.
    fn absorb(&mut self, wire: &[u8], app: &mut Vec<u8>, out: &mut Vec<u8>) -> io::Result<bool> {
        match (&mut self.tls, &mut self.ws) {
            (None, None) => {
                app.extend_from_slice(wire);
                Ok(true)
            }
            (Some(tls), None) => Ok(!tls.input(wire, app, out).map_err(other)?.peer_closed),
            (None, Some(ws)) => {
                let r = ws.input(wire, app);
                ws.take_output(out);
                r.map_err(other)?;
                Ok(!ws.is_closed())
            }
            (Some(tls), Some(ws)) => {
                let mut plain = Vec::new();
                let st = tls.input(wire, &mut plain, out).map_err(other)?;
                let r = ws.input(&plain, app);
                let mut ctl = Vec::new();
                ws.take_output(&mut ctl);
                if !ctl.is_empty() {
                    tls.output(&ctl, out).map_err(other)?;
                }
                r.map_err(other)?;
                Ok(!st.peer_closed && !ws.is_closed())
            }
        }
    }

    /// Feeds bytes that were read as plaintext (after TLS) but belong to the WebSocket that was
    /// just set up: the rest of the buffer that held the upgrade request.
    pub async fn absorb_plaintext(
        &mut self,
        plain: &[u8],
        app: &mut Vec<u8>,
        pool: &BufPool,
    ) -> io::Result<bool> {
        let Some(ws) = self.ws.as_mut() else {
            app.extend_from_slice(plain);
            return Ok(true);
        };
        let r = ws.input(plain, app);
        let mut ctl = Vec::new();
        ws.take_output(&mut ctl);
        let open = !ws.is_closed();
        let mut out = pool.take();
        match self.tls.as_mut() {
            Some(tls) => tls.output(&ctl, &mut out).map_err(other)?,
            None => out.extend_from_slice(&ctl),
        }
        self.send(out, pool).await?;
        r.map_err(other)?;
        Ok(open)
    }

    async fn send(&mut self, mut out: Vec<u8>, pool: &BufPool) -> io::Result<()> {
        if !self.held.is_empty() {
            let mut held = std::mem::take(&mut self.held);
            held.extend_from_slice(&out);
            pool.put(std::mem::replace(&mut out, held));
        }
        if out.is_empty() {
            pool.put(out);
            return Ok(());
        }
        let (res, out) = self.stream.write_all(out).await;
        pool.put(out);
        res.map(drop)
    }

    /// Writes bytes of the layer above (frames, or an HTTP answer) through the layers.
    pub async fn write_app(&mut self, app: Vec<u8>, pool: &BufPool) -> (io::Result<()>, Vec<u8>) {
        if self.tls.is_none() && self.ws.is_none() && self.held.is_empty() {
            let (res, app) = self.stream.write_all(app).await;
            return (res.map(drop), app);
        }
        let mut out = pool.take();
        if let Err(e) = self.wrap(&app, &mut out) {
            pool.put(out);
            return (Err(e), app);
        }
        (self.send(out, pool).await, app)
    }

    fn wrap(&mut self, app: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        match (&mut self.tls, &mut self.ws) {
            (None, None) => out.extend_from_slice(app),
            (Some(tls), None) => tls.output(app, out).map_err(other)?,
            (None, Some(ws)) => {
                ws.output(app).map_err(other)?;
                ws.take_output(out);
            }
            (Some(tls), Some(ws)) => {
                let mut framed = Vec::with_capacity(app.len() + 14);
                ws.output(app).map_err(other)?;
                ws.take_output(&mut framed);
                tls.output(&framed, out).map_err(other)?;
            }
        }
        Ok(())
    }

    /// Ends the layers (WebSocket close, TLS close_notify), then our side of the socket.
    pub async fn close(&mut self, pool: &BufPool) {
        let mut out = pool.take();
        if let Some(ws) = self.ws.as_mut() {
            ws.close();
            let mut ctl = Vec::new();
            ws.take_output(&mut ctl);
            match self.tls.as_mut() {
                Some(tls) => {
                    let _ = tls.output(&ctl, &mut out);
                }
                None => out.extend_from_slice(&ctl),
            }
        }
        if let Some(tls) = self.tls.as_mut() {
            tls.close(&mut out);
        }
        let _ = self.send(out, pool).await;
        let _ = self.stream.shutdown().await;
    }
}

/// How an HTTP tunnel session's frames come and go: requests (on any core) put upstream bodies
/// into `inbound` and take `backlog` downstream through one attached poller at a time.
#[derive(Debug)]
pub struct TunnelShared {
    pub secret: [u8; 16],
    /// The connection this session is, to wake it when input arrives.
    pub conn: Rc<ConnShared>,
    inbound: RefCell<VecDeque<Bytes>>,
    next_up: Cell<u64>,
    backlog: RefCell<Vec<u8>>,
    waiter: RefCell<Option<flume::Sender<Down>>>,
    peer_closed: Cell<bool>,
    ended: Cell<bool>,
    limit: usize,
}

/// What a downstream request gets from its session.
#[derive(Debug)]
pub enum Down {
    /// Whole frames, in order.
    Frames(Bytes),
    /// The wait was given up (by the poller) with nothing sent.
    Cancelled,
    /// Another downstream took over.
    Replaced,
    /// The session has ended and everything was handed out.
    Ended,
    /// No such session, or the secret does not match.
    Forbidden,
    /// The session's core could not be reached.
    Unavailable,
}

impl TunnelShared {
    pub fn new(secret: [u8; 16], conn: Rc<ConnShared>, limit: usize) -> TunnelShared {
        TunnelShared {
            secret,
            conn,
            inbound: RefCell::new(VecDeque::new()),
            next_up: Cell::new(0),
            backlog: RefCell::new(Vec::new()),
            waiter: RefCell::new(None),
            peer_closed: Cell::new(false),
            ended: Cell::new(false),
            limit,
        }
    }

    /// Whether `secret` is this session's (compared in constant time).
    pub fn secret_matches(&self, secret: &[u8; 16]) -> bool {
        crate::transport::http::secrets_equal(&self.secret, secret)
    }

    /// Whether the session still takes requests.
    pub fn is_open(&self) -> bool {
        !self.ended.get() && !self.peer_closed.get()
    }

    /// An `up` body numbered `n`: the HTTP status to answer (SPEC §12, "Upstream order").
    pub fn up(&self, n: u64, body: Bytes) -> u16 {
        if self.ended.get() || self.peer_closed.get() {
            return 403;
        }
        let next = self.next_up.get();
        if n == next {
            self.next_up.set(next + 1);
            if !body.is_empty() {
                self.inbound.borrow_mut().push_back(body);
                self.conn.wake_input();
            }
            204
        } else if n + 1 == next {
            204
        } else {
            409
        }
    }

    /// The client ended the session.
    pub fn close_by_peer(&self) {
        self.peer_closed.set(true);
        self.conn.wake_input();
    }

    /// Moves the upstream bytes received so far into `buf`; `false` once the peer has closed
    /// and everything was taken.
    pub fn take_inbound(&self, buf: &mut Vec<u8>) -> bool {
        let mut q = self.inbound.borrow_mut();
        let had = !q.is_empty();
        while let Some(b) = q.pop_front() {
            buf.extend_from_slice(&b);
        }
        had || !self.peer_closed.get()
    }

    /// Queues frames for the downstream; a full backlog (nobody polls) is an error.
    pub fn push_out(&self, bytes: &[u8]) -> io::Result<()> {
        if self.ended.get() {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        {
            let mut b = self.backlog.borrow_mut();
            if b.len() + bytes.len() > self.limit {
                return Err(io::Error::other("tunnel downstream backlog full"));
            }
            b.extend_from_slice(bytes);
        }
        self.hand_over();
        Ok(())
    }

    /// Gives the backlog to the waiting poller, if any.
    fn hand_over(&self) {
        if self.backlog.borrow().is_empty() {
            return;
        }
        let Some(w) = self.waiter.borrow_mut().take() else {
            return;
        };
        let frames = Bytes::from(std::mem::take(&mut *self.backlog.borrow_mut()));
        if let Err(e) = w.try_send(Down::Frames(frames)) {
            // The poller went away (its client disconnected): the frames wait for the next.
            if let Down::Frames(f) = e.into_inner() {
                let mut b = self.backlog.borrow_mut();
                let newer = std::mem::take(&mut *b);
                b.extend_from_slice(&f);
                b.extend_from_slice(&newer);
            }
        }
    }

    /// Attaches a poller, replacing (and releasing) the previous one.
    pub fn attach(&self, w: flume::Sender<Down>) {
        if let Some(old) = self.waiter.borrow_mut().replace(w) {
            let _ = old.try_send(Down::Replaced);
        }
        if self.ended.get() && self.backlog.borrow().is_empty() {
            if let Some(w) = self.waiter.borrow_mut().take() {
                let _ = w.try_send(Down::Ended);
            }
            return;
        }
        self.hand_over();
    }

    /// Releases the poller `w` if it is still waiting; it then gets `Cancelled`. A poller that
    /// was already answered keeps that answer.
    pub fn cancel(&self, w: &flume::Sender<Down>) {
        let mut slot = self.waiter.borrow_mut();
        if slot.as_ref().is_some_and(|s| s.same_channel(w)) {
            if let Some(s) = slot.take() {
                let _ = s.try_send(Down::Cancelled);
            }
        }
    }

    /// The connection has ended: the last frames go to the poller, later polls get `Ended`.
    pub fn end(&self) {
        self.ended.set(true);
        self.hand_over();
        if self.backlog.borrow().is_empty() {
            if let Some(w) = self.waiter.borrow_mut().take() {
                let _ = w.try_send(Down::Ended);
            }
        }
    }
}

/// A connection's transport.
#[derive(Debug)]
pub enum Link {
    /// Native frames on TCP: no layers, no copies.
    Tcp(TcpStream),
    /// TLS and/or WebSocket.
    Wire(Box<Wire>),
    /// An HTTP tunnel session.
    Tunnel(Rc<TunnelShared>),
}

/// What a read found.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// Bytes were appended (maybe none: a TLS handshake step, a WebSocket ping).
    Data,
    /// The peer has closed.
    Eof,
}

impl Link {
    /// Appends the frame bytes that arrived to `buf` (which has room reserved).
    pub async fn read(&mut self, buf: Vec<u8>, pool: &BufPool) -> (io::Result<Read>, Vec<u8>) {
        match self {
            Link::Tcp(s) => {
                use monoio::buf::IoBufMut as _;
                let len = buf.len();
                let (res, slice) = s.read(buf.slice_mut(len..)).await;
                let buf = slice.into_inner();
                (
                    res.map(|n| if n == 0 { Read::Eof } else { Read::Data }),
                    buf,
                )
            }
            Link::Wire(w) => {
                let mut buf = buf;
                let res = w.read_into(&mut buf, pool).await;
                (
                    res.map(|open| if open { Read::Data } else { Read::Eof }),
                    buf,
                )
            }
            Link::Tunnel(t) => {
                let mut buf = buf;
                let open = t.take_inbound(&mut buf);
                (Ok(if open { Read::Data } else { Read::Eof }), buf)
            }
        }
    }

    /// Writes whole frames.
    pub async fn write_all(&mut self, buf: Vec<u8>, pool: &BufPool) -> (io::Result<()>, Vec<u8>) {
        match self {
            Link::Tcp(s) => {
                let (res, buf) = s.write_all(buf).await;
                (res.map(drop), buf)
            }
            Link::Wire(w) => w.write_app(buf, pool).await,
            Link::Tunnel(t) => (t.push_out(&buf), buf),
        }
    }

    /// Whether layer output waits for [`Link::flush_held`].
    pub fn has_held(&self) -> bool {
        matches!(self, Link::Wire(w) if !w.held.is_empty())
    }

    /// Sends layer output held by [`Wire::read_first`]: before a connection waits for input.
    pub async fn flush_held(&mut self, pool: &BufPool) -> io::Result<()> {
        match self {
            Link::Wire(w) => w.flush(pool).await,
            Link::Tcp(_) | Link::Tunnel(_) => Ok(()),
        }
    }

    /// Ends our side.
    pub async fn shutdown(&mut self, pool: &BufPool) {
        match self {
            Link::Tcp(s) => {
                let _ = s.shutdown().await;
            }
            Link::Wire(w) => w.close(pool).await,
            Link::Tunnel(t) => t.end(),
        }
    }

    /// The socket underneath, if there is one of our own.
    /// The socket of a plain native connection (no TLS, WebSocket or tunnel), which is what
    /// may park ([`crate::park`]).
    pub fn plain_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        match self {
            Link::Tcp(s) => Some(s.as_raw_fd()),
            Link::Wire(_) | Link::Tunnel(_) => None,
        }
    }

    pub fn socket(&mut self) -> Option<&mut TcpStream> {
        match self {
            Link::Tcp(s) => Some(s),
            Link::Wire(w) => Some(&mut w.stream),
            Link::Tunnel(_) => None,
        }
    }
}
