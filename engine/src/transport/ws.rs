//! WebSocket framing (RFC 6455) as a sans-io layer over tungstenite's `WebSocketContext`: wire
//! bytes in, the tern byte stream out, and the other way round (SPEC §12, "WebSocket").

use std::io::{self, Read, Write};

use thiserror::Error;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::Message;

use super::http::RequestHead;

/// The subprotocol clients offer.
pub const SUBPROTOCOL: &str = "tern.v1";

/// Errors of the WebSocket layer.
#[derive(Debug, Error)]
pub enum WsError {
    #[error("websocket: {0}")]
    Protocol(#[from] tungstenite::Error),
    #[error("websocket: text message (tern frames travel in binary messages)")]
    Text,
}

/// Bytes handed to tungstenite and taken back from it; reading an empty input is `WouldBlock`,
/// which tungstenite treats as "nothing more yet".
#[derive(Debug, Default)]
struct MemIo {
    input: Vec<u8>,
    pos: usize,
    output: Vec<u8>,
}

impl Read for MemIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let rest = &self.input[self.pos..];
        if rest.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.pos += n;
        if self.pos == self.input.len() {
            self.input.clear();
            self.pos = 0;
        }
        Ok(n)
    }
}

impl Write for MemIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One server-side WebSocket.
pub struct WsLayer {
    ctx: WebSocketContext,
    io: MemIo,
    closed: bool,
}

impl std::fmt::Debug for WsLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsLayer")
            .field("closed", &self.closed)
            .finish()
    }
}

impl WsLayer {
    /// A WebSocket whose handshake has been answered; `max_message` bounds incoming messages.
    pub fn new(max_message: usize) -> WsLayer {
        // Small buffers: a connection holds them for its whole life.
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0)
            .max_message_size(Some(max_message))
            .max_frame_size(Some(max_message));
        WsLayer {
            ctx: WebSocketContext::new(Role::Server, Some(config)),
            io: MemIo::default(),
            closed: false,
        }
    }

    /// Whether the peer's close (or an error) ended the WebSocket.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Feeds bytes from the wire; appends the payloads of binary messages to `app`. Control
    /// frames are answered by bytes that `take_output` returns.
    pub fn input(&mut self, wire: &[u8], app: &mut Vec<u8>) -> Result<(), WsError> {
        self.io.input.extend_from_slice(wire);
        loop {
            match self.ctx.read(&mut self.io) {
                Ok(Message::Binary(b)) => app.extend_from_slice(&b),
                Ok(Message::Text(_)) => {
                    let _ = self.ctx.close(
                        &mut self.io,
                        Some(CloseFrame {
                            code: CloseCode::Unsupported,
                            reason: "tern frames travel in binary messages".into(),
                        }),
                    );
                    let _ = self.ctx.flush(&mut self.io);
                    self.closed = true;
                    return Err(WsError::Text);
                }
                Ok(Message::Close(_)) => {
                    // tungstenite queued the reply close frame; it goes out with the output.
                    let _ = self.ctx.flush(&mut self.io);
                    self.closed = true;
                    return Ok(());
                }
                Ok(_) => {
                    // Ping (the pong is queued), pong, raw frame.
                    let _ = self.ctx.flush(&mut self.io);
                }
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    let _ = self.ctx.flush(&mut self.io);
                    return Ok(());
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    self.closed = true;
                    return Ok(());
                }
                Err(e) => {
                    self.closed = true;
                    return Err(e.into());
                }
            }
        }
    }

    /// Wraps `app` (whole tern frames) in one binary message.
    pub fn output(&mut self, app: &[u8]) -> Result<(), WsError> {
        self.ctx.write(
            &mut self.io,
            Message::Binary(bytes::Bytes::copy_from_slice(app)),
        )?;
        self.ctx.flush(&mut self.io)?;
        Ok(())
    }

    /// Starts the closing handshake with status 1000.
    pub fn close(&mut self) {
        let _ = self.ctx.close(
            &mut self.io,
            Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }),
        );
        let _ = self.ctx.flush(&mut self.io);
    }

    /// Moves the bytes waiting for the wire into `out`.
    pub fn take_output(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.io.output);
    }
}

/// The `101 Switching Protocols` answer to a WebSocket upgrade, or the reason it is refused.
pub fn accept(head: &RequestHead) -> Result<Vec<u8>, &'static str> {
    if head.method != "GET" {
        return Err("a WebSocket upgrade must be a GET");
    }
    if head.header("sec-websocket-version") != Some("13") {
        return Err("Sec-WebSocket-Version must be 13");
    }
    let Some(key) = head.header("sec-websocket-key") else {
        return Err("Sec-WebSocket-Key missing");
    };
    let accept = tungstenite::handshake::derive_accept_key(key.trim().as_bytes());
    let offered = head
        .header("sec-websocket-protocol")
        .map(|p| p.split(',').any(|p| p.trim() == SUBPROTOCOL))
        .unwrap_or(false);
    let mut r = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
    );
    if offered {
        r.push_str("Sec-WebSocket-Protocol: ");
        r.push_str(SUBPROTOCOL);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    Ok(r.into_bytes())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A client frame: FIN set, masked with a fixed key.
    fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let key = [1u8, 2, 3, 4];
        let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
        assert!(payload.len() < 126);
        f.push(0x80 | payload.len() as u8);
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        f
    }

    #[test]
    fn binary_messages_make_one_stream_and_pings_are_answered() {
        let mut ws = WsLayer::new(1 << 20);
        let mut app = Vec::new();
        let mut wire = client_frame(0x2, true, b"abc");
        wire.extend(client_frame(0x9, true, b"p"));
        wire.extend(client_frame(0x2, false, b"de"));
        wire.extend(client_frame(0x0, true, b"f"));
        // Split mid-frame: the layer keeps the partial frame.
        ws.input(&wire[..5], &mut app).unwrap();
        ws.input(&wire[5..], &mut app).unwrap();
        assert_eq!(app, b"abcdef");
        let mut out = Vec::new();
        ws.take_output(&mut out);
        assert_eq!(out, [0x8a, 0x01, b'p'], "pong echoes the ping");
        ws.output(b"xyz").unwrap();
        out.clear();
        ws.take_output(&mut out);
        assert_eq!(
            out,
            [0x82, 0x03, b'x', b'y', b'z'],
            "server frames are unmasked"
        );
    }

    #[test]
    fn text_and_close_end_the_socket() {
        let mut ws = WsLayer::new(1 << 20);
        let mut app = Vec::new();
        assert!(matches!(
            ws.input(&client_frame(0x1, true, b"hi"), &mut app),
            Err(WsError::Text)
        ));
        let mut out = Vec::new();
        ws.take_output(&mut out);
        assert_eq!(&out[..4], &[0x88, out[1], 0x03, 0xeb], "close 1003");

        let mut ws = WsLayer::new(1 << 20);
        ws.input(&client_frame(0x8, true, &1000u16.to_be_bytes()), &mut app)
            .unwrap();
        assert!(ws.is_closed());
    }

    #[test]
    fn unmasked_client_frames_are_refused() {
        let mut ws = WsLayer::new(1 << 20);
        let mut app = Vec::new();
        assert!(ws.input(&[0x82, 0x01, b'a'], &mut app).is_err());
    }
}
