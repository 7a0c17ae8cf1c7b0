//! One TCP connection, both directions: decides from the client's first bytes what it carries
//! (SPEC.md §12) — native frames, a PROXY header first, HTTP (a WebSocket upgrade or the tunnel)
//! or TLS — and takes the tern frame stream out of each direction: the bytes themselves, the
//! payloads of binary WebSocket messages, or the bodies of tunnel requests and responses.
//!
//! Offsets of frames count bytes of the tern stream of their direction: for WebSocket and the
//! tunnel that is payload and body bytes, not TCP bytes.

use std::collections::VecDeque;

use serde_json::{json, Value};

use crate::detect::{self, Class, ProxyInfo};
use crate::http::{self, Chunked, Head, HeadParse, Step};
use crate::stream::{Item, StreamDecoder};
use crate::ws::{self, WsFrame};

/// What a connection carries, as the output tags it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Not decided yet (no client bytes so far).
    Unknown,
    Native,
    Ws,
    Tunnel,
    Tls,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Unknown => "-",
            Transport::Native => "native",
            Transport::Ws => "ws",
            Transport::Tunnel => "tunnel",
            Transport::Tls => "tls",
        }
    }
}

/// Something about the transport worth a line of its own.
#[derive(Debug)]
pub struct Note {
    /// "proxy", "http", "ws", "tls", "gap" or "end".
    pub kind: &'static str,
    /// Counted with the decode errors (the exit status says the capture did not decode cleanly).
    pub error: bool,
    pub text: String,
    /// Extra fields for the JSON form.
    pub detail: Value,
}

#[derive(Debug)]
pub enum What<'a> {
    Item(Item<'a>),
    Note(Note),
}

/// An item or a note, with the direction and transport it belongs to.
#[derive(Debug)]
pub struct Event<'a> {
    pub from_client: bool,
    pub transport: Transport,
    pub what: What<'a>,
}

type Sink<'s> = dyn FnMut(Event<'_>) + 's;

/// How one direction's bytes are being read.
#[derive(Debug)]
enum Mode {
    /// Client, first bytes: deciding the transport.
    Detect,
    /// Holding bytes until the other direction decides how to read them: the server before the
    /// client has been classified; the client after a WebSocket upgrade request until the answer.
    Wait,
    /// Tern frames directly. Also the fallback after a gap or broken framing, with the decoder in
    /// salvage mode.
    Native,
    /// TLS: nothing to decode.
    Ignore,
    /// HTTP: a request head (client) or response head (server) comes next.
    Head,
    /// HTTP body; `tern` when it holds frames.
    Body { framing: Framing, tern: bool },
    /// RFC 6455 frames; `message` is the opcode of a fragmented message in progress.
    Ws { message: Option<u8> },
}

#[derive(Debug)]
enum Framing {
    Length(u64),
    Chunked(Chunked),
    UntilClose,
}

#[derive(Debug)]
struct Side {
    client: bool,
    mode: Mode,
    /// Bytes received and not yet consumed by `mode`.
    buf: Vec<u8>,
    /// The tern frame stream carried by this direction.
    tern: StreamDecoder,
    /// Bytes have been seen, so `midstream` can no longer change how this side starts.
    started: bool,
    midstream: bool,
}

/// A request the client sent, waiting for its response.
#[derive(Debug)]
struct Request {
    head_only: bool,
    upgrade: bool,
    tern_path: bool,
    line: String,
}

/// State shared by the directions.
#[derive(Debug)]
struct Shared {
    transport: Transport,
    requests: VecDeque<Request>,
    proxy: Option<ProxyInfo>,
    /// A mode decided by one side for the other, applied when the other is in `Wait`.
    next_mode: [Option<Mode>; 2],
}

/// Decodes one connection.
#[derive(Debug)]
pub struct ConnDecoder {
    sides: [Side; 2],
    shared: Shared,
}

impl ConnDecoder {
    pub fn new(max_body: u32) -> Self {
        let side = |client: bool| Side {
            client,
            mode: if client { Mode::Detect } else { Mode::Wait },
            buf: Vec::new(),
            tern: StreamDecoder::new(false, max_body),
            started: false,
            midstream: false,
        };
        ConnDecoder {
            sides: [side(true), side(false)],
            shared: Shared {
                transport: Transport::Unknown,
                requests: VecDeque::new(),
                proxy: None,
                next_mode: [None, None],
            },
        }
    }

    /// For bytes known to be native frames (test vectors, hex dumps): no detection.
    pub fn native(max_body: u32) -> Self {
        let mut d = ConnDecoder::new(max_body);
        d.sides[0].mode = Mode::Native;
        d.sides[1].mode = Mode::Native;
        d.shared.transport = Transport::Native;
        d
    }

    /// For a file holding only the server's side of an HTTP connection.
    pub fn responses_only(max_body: u32) -> Self {
        let mut d = ConnDecoder::new(max_body);
        d.sides[0].mode = Mode::Ignore;
        d.sides[1].mode = Mode::Head;
        d.shared.transport = Transport::Tunnel;
        d
    }

    pub fn transport(&self) -> Transport {
        self.shared.transport
    }

    /// The PROXY header's client address, when one stood for the peer.
    pub fn proxied_client(&self) -> Option<std::net::SocketAddr> {
        self.shared
            .proxy
            .as_ref()
            .filter(|p| p.proxied)
            .and_then(|p| p.client)
    }

    /// The capture missed the start of this direction: it cannot be classified or framed, so it
    /// is searched for frame magic (and the client's side decides the server's).
    pub fn mark_midstream(&mut self, from_client: bool) {
        let i = idx(from_client);
        let s = &mut self.sides[i];
        if s.started {
            return;
        }
        s.midstream = true;
        s.tern = StreamDecoder::new(true, s.tern.max_body);
        if from_client && matches!(s.mode, Mode::Detect) {
            s.mode = Mode::Native;
            self.shared.transport = Transport::Native;
            self.shared.next_mode[1] = Some(Mode::Native);
        }
    }

    pub fn feed(&mut self, from_client: bool, data: &[u8], sink: &mut Sink<'_>) {
        let i = idx(from_client);
        self.sides[i].started = true;
        self.sides[i].buf.extend_from_slice(data);
        self.run(i, sink);
    }

    /// Bytes the capture lost in one direction.
    pub fn gap(&mut self, from_client: bool, lost: u64, sink: &mut Sink<'_>) {
        let i = idx(from_client);
        self.sides[i].started = true;
        let t = self.shared.transport;
        let s = &mut self.sides[i];
        match s.mode {
            Mode::Ignore => return,
            Mode::Native => {}
            Mode::Detect | Mode::Wait => {
                // Undecided bytes before a hole: read them, and what follows, as native.
                if s.client {
                    self.shared.transport = Transport::Native;
                    self.shared.next_mode[1] = Some(Mode::Native);
                }
                s.mode = Mode::Native;
                let buf = std::mem::take(&mut s.buf);
                feed_tern(&mut s.tern, s.client, self.shared.transport, &buf, sink);
            }
            Mode::Head | Mode::Body { .. } | Mode::Ws { .. } => {
                note(
                    sink,
                    s.client,
                    t,
                    "gap",
                    false,
                    format!(
                        "{lost} bytes missing from the capture: {} framing is lost, the rest of \
                         this direction is searched for frame magic",
                        t.as_str()
                    ),
                    json!({"lost": lost}),
                );
                s.salvage();
            }
        }
        s.tern.gap(lost);
        self.run(i, sink);
    }

    /// The capture ends: undecided bytes are decoded as well as they can be, and cut frames are
    /// reported.
    pub fn finish(&mut self, sink: &mut Sink<'_>) {
        for i in 0..2 {
            self.finish_side(i == 0, sink);
        }
    }

    /// One direction has ended (the proxy's pumps end separately).
    pub fn finish_side(&mut self, from_client: bool, sink: &mut Sink<'_>) {
        let i = idx(from_client);
        let s = &mut self.sides[i];
        match s.mode {
            // A client that sent nothing leaves the connection unclassified.
            Mode::Detect if s.buf.is_empty() => {}
            Mode::Detect => {
                // Too few bytes to tell: native, as a server would read them.
                s.mode = Mode::Native;
                self.shared.transport = Transport::Native;
                self.shared.next_mode[1] = Some(Mode::Native);
            }
            Mode::Wait if s.client => {
                // An upgrade whose answer is not in the capture: assume it succeeded.
                s.mode = Mode::Ws { message: None };
            }
            Mode::Wait => {
                // The server spoke and the client never did: read it as native.
                s.mode = Mode::Native;
                if self.shared.transport == Transport::Unknown {
                    self.shared.transport = Transport::Native;
                }
            }
            _ => {}
        }
        self.run(i, sink);
        let t = self.shared.transport;
        let s = &mut self.sides[i];
        if !s.buf.is_empty() {
            let what = match s.mode {
                Mode::Head => Some("an HTTP head"),
                Mode::Ws { .. } => Some("a WebSocket frame"),
                Mode::Body { .. } => Some("a chunked body's framing"),
                _ => None,
            };
            if let Some(what) = what {
                let n = s.buf.len();
                note(
                    sink,
                    s.client,
                    t,
                    "end",
                    false,
                    format!("stream ends {n} bytes into {what}"),
                    json!({"bytes": n}),
                );
            }
            s.buf.clear();
        }
        let client = s.client;
        s.tern.finish(&mut |item| {
            sink(Event {
                from_client: client,
                transport: t,
                what: What::Item(item),
            })
        });
    }

    /// Runs side `i`, then whichever side the other's decisions released, until neither moves.
    fn run(&mut self, i: usize, sink: &mut Sink<'_>) {
        let mut todo = vec![i];
        while let Some(i) = todo.pop() {
            self.sides[i].run(&mut self.shared, sink);
            for j in 0..2 {
                // A decision for a side that is not waiting for one is stale (the side has
                // decided from its own bytes, e.g. after a gap).
                let Some(m) = self.shared.next_mode[j].take() else {
                    continue;
                };
                let s = &mut self.sides[j];
                if matches!(s.mode, Mode::Wait) {
                    s.mode = m;
                    // A server side joined mid-stream cannot find its HTTP or WebSocket
                    // framing; frames are still found by their magic.
                    if s.midstream && !matches!(s.mode, Mode::Native | Mode::Ignore) {
                        s.salvage();
                    }
                    todo.push(j);
                }
            }
        }
    }
}

fn idx(from_client: bool) -> usize {
    if from_client {
        0
    } else {
        1
    }
}

fn note(
    sink: &mut Sink<'_>,
    from_client: bool,
    transport: Transport,
    kind: &'static str,
    error: bool,
    text: String,
    detail: Value,
) {
    sink(Event {
        from_client,
        transport,
        what: What::Note(Note {
            kind,
            error,
            text,
            detail,
        }),
    });
}

fn feed_tern(
    tern: &mut StreamDecoder,
    from_client: bool,
    transport: Transport,
    data: &[u8],
    sink: &mut Sink<'_>,
) {
    tern.feed(data, &mut |item| {
        sink(Event {
            from_client,
            transport,
            what: What::Item(item),
        })
    });
}

/// Whether a request target names a tunnel path; proxies send the absolute form
/// (`http://host/tern/up?...`).
fn tunnel_path(path: &str) -> bool {
    let p = match path.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("", |i| &rest[i..]),
        None => path,
    };
    p.starts_with("/tern/")
}

impl Side {
    /// Gives up on the transport's framing: the rest of the direction is searched for frames.
    fn salvage(&mut self) {
        self.mode = Mode::Native;
        self.tern.salvage = true;
        self.tern.gap(0);
    }

    fn run(&mut self, sh: &mut Shared, sink: &mut Sink<'_>) {
        let mut pos = 0;
        loop {
            let t = sh.transport;
            let rest = &self.buf[pos..];
            match &mut self.mode {
                Mode::Wait => break,
                Mode::Ignore => {
                    pos = self.buf.len();
                    break;
                }
                Mode::Native => {
                    feed_tern(&mut self.tern, self.client, t, rest, sink);
                    pos = self.buf.len();
                    break;
                }
                Mode::Detect => match detect::classify(rest) {
                    Class::Need => break,
                    Class::Proxy(n, info) => {
                        pos += n;
                        proxy_note(sink, t, &info);
                        sh.proxy = Some(info);
                    }
                    Class::BadProxy(e) => {
                        note(sink, true, t, "proxy", true, e, json!({}));
                        sh.transport = Transport::Native;
                        sh.next_mode[1] = Some(Mode::Native);
                        self.salvage();
                    }
                    Class::Native | Class::Other => {
                        sh.transport = Transport::Native;
                        sh.next_mode[1] = Some(Mode::Native);
                        self.mode = Mode::Native;
                    }
                    Class::Tls => {
                        sh.transport = Transport::Tls;
                        sh.next_mode[1] = Some(Mode::Ignore);
                        self.mode = Mode::Ignore;
                        note(
                            sink,
                            true,
                            Transport::Tls,
                            "tls",
                            false,
                            "TLS: encrypted, frames inside cannot be decoded".into(),
                            json!({}),
                        );
                    }
                    Class::Http => {
                        sh.transport = Transport::Tunnel;
                        sh.next_mode[1] = Some(Mode::Head);
                        self.mode = Mode::Head;
                    }
                },
                Mode::Head => {
                    let parsed = if self.client {
                        http::parse_request(rest)
                    } else {
                        http::parse_response(rest)
                    };
                    match parsed {
                        HeadParse::Need => break,
                        HeadParse::Bad(e) => {
                            note(sink, self.client, t, "http", true, e, json!({}));
                            self.salvage();
                        }
                        HeadParse::Done(h) => {
                            pos += h.len;
                            self.mode = if self.client {
                                request(sh, &h, sink)
                            } else {
                                response(sh, &h, sink)
                            };
                        }
                    }
                }
                Mode::Body { framing, tern } => {
                    let tern = *tern;
                    let (data, used, done) = match framing {
                        Framing::UntilClose => (rest, rest.len(), false),
                        Framing::Length(rem) => {
                            let n = (*rem).min(rest.len() as u64) as usize;
                            *rem -= n as u64;
                            (&rest[..n], n, *rem == 0)
                        }
                        Framing::Chunked(c) => match c.step(rest) {
                            Step::Need => break,
                            Step::Data(n) => (&rest[..n], n, false),
                            Step::Skip(n) => (&rest[..0], n, false),
                            Step::Done(n) => (&rest[..0], n, true),
                            Step::Bad(e) => {
                                note(sink, self.client, t, "http", true, e, json!({}));
                                self.salvage();
                                continue;
                            }
                        },
                    };
                    if tern && !data.is_empty() {
                        feed_tern(&mut self.tern, self.client, t, data, sink);
                    }
                    pos += used;
                    if done {
                        if tern {
                            // Tunnel bodies hold whole frames: one cut short is reported here,
                            // and the next body starts a frame.
                            let client = self.client;
                            self.tern.boundary(&mut |item| {
                                sink(Event {
                                    from_client: client,
                                    transport: t,
                                    what: What::Item(item),
                                })
                            });
                        }
                        self.mode = Mode::Head;
                    } else if used == 0 || pos == self.buf.len() {
                        break;
                    }
                }
                Mode::Ws { message } => match ws::parse(rest) {
                    ws::Parsed::Need => break,
                    ws::Parsed::Bad(e) => {
                        note(sink, self.client, t, "ws", true, e, json!({}));
                        self.salvage();
                    }
                    ws::Parsed::Frame(f, n) => {
                        pos += n;
                        ws_frame(&mut self.tern, message, self.client, t, f, sink);
                    }
                },
            }
        }
        self.buf.drain(..pos);
    }
}

fn proxy_note(sink: &mut Sink<'_>, t: Transport, p: &ProxyInfo) {
    let addr = |a: Option<std::net::SocketAddr>| a.map_or("-".to_owned(), |a| a.to_string());
    let text = if p.proxied {
        format!(
            "PROXY v{}: real client {} (to {})",
            p.version,
            addr(p.client),
            addr(p.server)
        )
    } else {
        format!(
            "PROXY v{}: no address (LOCAL/UNKNOWN), the peer stands",
            p.version
        )
    };
    note(
        sink,
        true,
        t,
        "proxy",
        false,
        text,
        json!({"version": p.version, "client": p.client.map(|a| a.to_string()),
               "server": p.server.map(|a| a.to_string())}),
    );
}

/// A request head: notes it, queues it for its response, and says how its body is read.
fn request(sh: &mut Shared, h: &Head, sink: &mut Sink<'_>) -> Mode {
    let method = h.method.clone().unwrap_or_default();
    let path = h.path.clone().unwrap_or_default();
    let tern_path = tunnel_path(&path);
    let shown = http::short_path(&path);
    let upgrade = h.upgrade_ws;
    let body = if h.chunked {
        Some(Framing::Chunked(Chunked::Size))
    } else {
        h.content_length.filter(|&n| n > 0).map(Framing::Length)
    };
    let tern = http::is_tern_body(h.content_type.as_deref(), tern_path);
    let mut text = format!("{method} {shown}");
    match (&body, upgrade) {
        (_, true) => {
            sh.transport = Transport::Ws;
            text.push_str(" (WebSocket upgrade");
            if let Some(p) = &h.ws_protocol {
                text.push_str(&format!(", protocol {p}"));
            }
            text.push(')');
        }
        (Some(Framing::Length(n)), _) => text.push_str(&format!(" ({n} bytes)")),
        (Some(_), _) => text.push_str(" (chunked)"),
        (None, _) => {}
    }
    if body.is_some() && !tern {
        text.push_str(" [body is not tern]");
    }
    note(
        sink,
        true,
        sh.transport,
        "http",
        false,
        text,
        json!({"method": method, "path": shown, "session": http::path_session(&path)}),
    );
    sh.requests.push_back(Request {
        head_only: method.eq_ignore_ascii_case("HEAD"),
        upgrade,
        tern_path,
        line: format!("{method} {shown}"),
    });
    match body {
        // The client's next bytes depend on the answer: frames after a 101, HTTP otherwise.
        _ if upgrade => Mode::Wait,
        Some(framing) => Mode::Body { framing, tern },
        None => Mode::Head,
    }
}

/// A response head: notes it, pairs it with its request, and says how its body is read.
fn response(sh: &mut Shared, h: &Head, sink: &mut Sink<'_>) -> Mode {
    let status = h.status.unwrap_or(0);
    // Interim answers (100 Continue) leave the request waiting for its real answer.
    let req = if (100..200).contains(&status) && status != 101 {
        None
    } else {
        sh.requests.pop_front()
    };
    let upgraded = status == 101;
    if upgraded {
        sh.transport = Transport::Ws;
        sh.next_mode[0] = Some(Mode::Ws { message: None });
    } else if req.as_ref().is_some_and(|r| r.upgrade) {
        // Upgrade refused: the connection stays HTTP.
        sh.transport = Transport::Tunnel;
        sh.next_mode[0] = Some(Mode::Head);
    }
    let tern_path = req.as_ref().is_none_or(|r| r.tern_path);
    let no_body = (100..200).contains(&status)
        || status == 204
        || status == 304
        || req.as_ref().is_some_and(|r| r.head_only);
    let body = if no_body {
        None
    } else if h.chunked {
        Some(Framing::Chunked(Chunked::Size))
    } else {
        match h.content_length {
            Some(0) => None,
            Some(n) => Some(Framing::Length(n)),
            None => Some(Framing::UntilClose),
        }
    };
    let tern = http::is_tern_body(h.content_type.as_deref(), tern_path);
    let mut text = format!("HTTP {status} {}", h.reason.as_deref().unwrap_or(""))
        .trim_end()
        .to_owned();
    if let Some(s) = &h.session {
        text.push_str(&format!(", session {s}"));
    }
    match &body {
        Some(Framing::Length(n)) => text.push_str(&format!(", {n} bytes")),
        Some(Framing::Chunked(_)) => text.push_str(", chunked"),
        Some(Framing::UntilClose) => text.push_str(", body until close"),
        None => {}
    }
    if body.is_some() && !tern {
        text.push_str(" [body is not tern]");
    }
    if let Some(r) = &req {
        text.push_str(&format!(" (to {})", r.line));
    }
    note(
        sink,
        false,
        sh.transport,
        "http",
        false,
        text,
        json!({"status": status, "session": h.session}),
    );
    match body {
        _ if upgraded => Mode::Ws { message: None },
        Some(framing) => Mode::Body { framing, tern },
        None => Mode::Head,
    }
}

/// One WebSocket frame: binary payloads continue the tern stream, the rest gets a short note.
fn ws_frame(
    tern: &mut StreamDecoder,
    message: &mut Option<u8>,
    client: bool,
    t: Transport,
    f: WsFrame,
    sink: &mut Sink<'_>,
) {
    let mut say =
        |error: bool, text: String, detail: Value| note(sink, client, t, "ws", error, text, detail);
    if f.rsv != 0 {
        // An extension (permessage-deflate) nobody negotiated for tern: the payload is not ours
        // to read, but the framing still holds.
        say(
            true,
            format!("WebSocket frame with reserved bits {:#04x} set", f.rsv),
            json!({"opcode": ws::opcode_name(f.opcode), "len": f.payload.len()}),
        );
        return;
    }
    if client != f.masked {
        say(
            false,
            format!(
                "{} frame {} (RFC 6455 requires masking from clients only)",
                ws::opcode_name(f.opcode),
                if f.masked { "masked" } else { "not masked" }
            ),
            json!({"opcode": ws::opcode_name(f.opcode), "masked": f.masked}),
        );
    }
    let data_message = match f.opcode {
        ws::CONTINUATION => match *message {
            Some(op) => Some(op),
            None => {
                say(
                    true,
                    "WebSocket continuation frame outside a message".into(),
                    json!({"opcode": "continuation", "len": f.payload.len()}),
                );
                None
            }
        },
        op @ (ws::TEXT | ws::BINARY) => {
            if message.is_some() {
                say(
                    true,
                    "WebSocket message starts inside a fragmented one".into(),
                    json!({"opcode": ws::opcode_name(op)}),
                );
            }
            if op == ws::TEXT {
                say(
                    false,
                    format!(
                        "ws text message ({} bytes): not tern frames (§12: a protocol error)",
                        f.payload.len()
                    ),
                    json!({"opcode": "text", "len": f.payload.len()}),
                );
            }
            Some(op)
        }
        ws::CLOSE => {
            let code = f.payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
            let reason = String::from_utf8_lossy(f.payload.get(2..).unwrap_or_default());
            let text = match code {
                Some(c) if reason.is_empty() => format!("ws close {c}"),
                Some(c) => format!("ws close {c} {reason:?}"),
                None => "ws close".into(),
            };
            say(
                false,
                text,
                json!({"opcode": "close", "code": code, "reason": reason}),
            );
            // Nothing of the tern stream follows a close: a frame cut short shows here.
            tern.finish(&mut |item| {
                sink(Event {
                    from_client: client,
                    transport: t,
                    what: What::Item(item),
                })
            });
            return;
        }
        op @ (ws::PING | ws::PONG) => {
            say(
                false,
                format!("ws {} ({} bytes)", ws::opcode_name(op), f.payload.len()),
                json!({"opcode": ws::opcode_name(op), "len": f.payload.len()}),
            );
            return;
        }
        op => {
            say(
                true,
                format!("WebSocket frame with reserved opcode {op:#x}"),
                json!({"opcode": op, "len": f.payload.len()}),
            );
            return;
        }
    };
    *message = if f.fin { None } else { data_message };
    if data_message == Some(ws::BINARY) {
        feed_tern(tern, client, t, &f.payload, sink);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::borrow::Cow;
    use tern_protocol::{Body, Conv, Frame, MessageKind, MsgId, Ping, Send};

    fn frames() -> Vec<u8> {
        let mut b = Vec::new();
        for i in 1..4u32 {
            Frame::new(
                i,
                Body::Send(Send {
                    to: Conv::direct("bob"),
                    msg_id: MsgId([i as u8; 16]),
                    kind: MessageKind::TEXT,
                    body: Cow::Borrowed(b"hello"),
                }),
            )
            .encode(&mut b)
            .unwrap();
            Frame::new(i, Body::Ping(Ping { time: 1 }))
                .encode(&mut b)
                .unwrap();
        }
        b
    }

    /// Both directions of a tunnel connection and of a WebSocket connection.
    fn conversations() -> Vec<(Vec<u8>, Vec<u8>)> {
        let f = frames();
        let mut up = format!(
            "POST /tern/up?s=abc&n=0 HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            f.len()
        )
        .into_bytes();
        up.extend_from_slice(&f);
        let mut down = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for part in f.chunks(7) {
            down.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            down.extend_from_slice(part);
            down.extend_from_slice(b"\r\n");
        }
        down.extend_from_slice(b"0\r\n\r\n");
        let mut wsc = b"GET /tern/ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n".to_vec();
        let mut wss = b"HTTP/1.1 101 Switching Protocols\r\n\r\n".to_vec();
        for part in f.chunks(30) {
            wsc.extend_from_slice(&[0x82, 0x80 | part.len() as u8, 9, 8, 7, 6]);
            wsc.extend(
                part.iter()
                    .enumerate()
                    .map(|(i, b)| b ^ [9, 8, 7, 6][i % 4]),
            );
            wss.extend_from_slice(&[0x82, part.len() as u8]);
            wss.extend_from_slice(part);
        }
        vec![(up, down), (wsc, wss)]
    }

    /// Every event as a line, feeding the two directions in the given piece sizes, alternating.
    fn run(c: &[u8], s: &[u8], piece: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut d = ConnDecoder::new(65_536);
        let mut sink = |ev: Event<'_>| {
            let what = match ev.what {
                What::Item(Item::Frame {
                    offset,
                    parsed: Ok(f),
                    ..
                }) => format!("{offset} {} #{}", f.body.frame_type(), f.request_id),
                What::Item(other) => format!("{other:?}"),
                What::Note(n) => format!("{} {}", n.kind, n.error),
            };
            out.push(format!(
                "{} {} {what}",
                ev.from_client,
                ev.transport.as_str()
            ));
        };
        let (mut cs, mut ss) = (c.chunks(piece), s.chunks(piece));
        loop {
            let (a, b) = (cs.next(), ss.next());
            if a.is_none() && b.is_none() {
                break;
            }
            if let Some(a) = a {
                d.feed(true, a, &mut sink);
            }
            if let Some(b) = b {
                d.feed(false, b, &mut sink);
            }
        }
        d.finish(&mut sink);
        out
    }

    #[test]
    fn byte_by_byte_equals_all_at_once() {
        for (c, s) in conversations() {
            let whole = run(&c, &s, usize::MAX);
            let frames = whole.iter().filter(|l| l.contains(" #")).count();
            assert_eq!(frames, 12, "{whole:#?}");
            assert!(!whole.iter().any(|l| l.ends_with("true")), "{whole:#?}");
            for piece in [1, 2, 3, 5, 64] {
                let mut split = run(&c, &s, piece);
                // Notes and frames of one direction keep their order; the interleaving of the
                // two directions depends on how the bytes arrive.
                let mut w = whole.clone();
                w.sort_by_key(|l| l.starts_with("false"));
                split.sort_by_key(|l| l.starts_with("false"));
                assert_eq!(w, split, "piece {piece}");
            }
        }
    }

    #[test]
    fn garbage_after_any_prefix_does_not_panic() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for (c, s) in conversations() {
            for _ in 0..200 {
                let cut = (rnd() as usize) % c.len();
                let mut c2 = c[..cut].to_vec();
                c2.extend((0..(rnd() % 300)).map(|_| rnd() as u8));
                let cut = (rnd() as usize) % s.len();
                let mut s2 = s[..cut].to_vec();
                s2.extend((0..(rnd() % 300)).map(|_| rnd() as u8));
                run(&c2, &s2, 1 + (rnd() as usize) % 40);
            }
        }
    }
}
