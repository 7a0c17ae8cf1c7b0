//! A minimal, fast tern client for load generation: connect from a chosen source address,
//! HELLO/WELCOME, then frames in and out over tokio. Deliberately not the SDK: the load tool
//! must not add retransmission timers or local state that would blur what the node does.

use std::net::{IpAddr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use tern_protocol::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};

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

/// Reads frames from one half of a connection.
pub struct FrameReader {
    rd: OwnedReadHalf,
    buf: Vec<u8>,
    start: usize,
}

impl FrameReader {
    pub fn new(rd: OwnedReadHalf) -> Self {
        FrameReader {
            rd,
            buf: Vec::with_capacity(4096),
            start: 0,
        }
    }

    /// The next frame, owned; `None` at end of stream.
    pub async fn next(&mut self) -> Result<Option<Frame<'static>>> {
        loop {
            match decode(&self.buf[self.start..], ABS_MAX_BODY) {
                Ok(Some((f, used))) => {
                    let f = f.into_owned();
                    self.start += used;
                    if self.start == self.buf.len() {
                        self.buf.clear();
                        self.start = 0;
                    }
                    return Ok(Some(f));
                }
                Ok(None) => {}
                Err(e) => bail!("node sent an undecodable frame: {e}"),
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.rd.read(&mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Writes frames, batching into one buffer per call.
pub struct FrameWriter {
    wr: OwnedWriteHalf,
    buf: Vec<u8>,
}

impl FrameWriter {
    pub fn new(wr: OwnedWriteHalf) -> Self {
        FrameWriter {
            wr,
            buf: Vec::with_capacity(4096),
        }
    }

    pub fn queue(&mut self, f: &Frame<'_>) -> Result<()> {
        f.encode(&mut self.buf).map_err(|e| anyhow!("{e}"))?;
        Ok(())
    }

    pub async fn flush(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            self.wr.write_all(&self.buf).await?;
            self.buf.clear();
        }
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

/// Connects and completes the handshake.
pub async fn login(
    source: IpAddr,
    target: SocketAddr,
    token: &str,
    device: &str,
    resume: u64,
) -> Result<Conn> {
    let s = connect(source, target).await?;
    let (rd, wr) = s.into_split();
    let mut reader = FrameReader::new(rd);
    let mut writer = FrameWriter::new(wr);
    writer
        .send(&Frame::new(
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
        ))
        .await?;
    match reader.next().await? {
        Some(Frame {
            body: Body::Welcome(_),
            ..
        }) => Ok(Conn { reader, writer }),
        Some(Frame {
            body: Body::Error(e),
            ..
        }) => bail!("HELLO refused: {} {}", e.code, e.message),
        Some(other) => bail!("expected WELCOME, got {}", other.frame_type()),
        None => bail!("node closed the connection during the handshake"),
    }
}
