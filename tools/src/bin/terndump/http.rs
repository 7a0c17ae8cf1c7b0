//! HTTP/1.1 as the tunnel and the WebSocket upgrade use it, read from captured bytes: request and
//! response heads (httparse), how long each body is, chunked transfer coding, and the tunnel's
//! session ids shortened for display.

/// Heads larger than this are treated as garbage rather than waited for.
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 64;

/// What a head says about the message and its body.
#[derive(Debug, Default, Clone)]
pub struct Head {
    /// Bytes the head took, including empty lines before it.
    pub len: usize,
    pub method: Option<String>,
    pub path: Option<String>,
    pub status: Option<u16>,
    pub reason: Option<String>,
    pub content_length: Option<u64>,
    pub chunked: bool,
    pub content_type: Option<String>,
    /// `Upgrade: websocket` on a request.
    pub upgrade_ws: bool,
    /// `Sec-WebSocket-Protocol`.
    pub ws_protocol: Option<String>,
    /// `X-Tern-Session`.
    pub session: Option<String>,
}

/// The outcome of parsing a head at the start of a buffer.
#[derive(Debug)]
pub enum HeadParse {
    Need,
    Done(Head),
    Bad(String),
}

pub fn parse_request(buf: &[u8]) -> HeadParse {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
            let mut h = Head {
                len,
                method: req.method.map(str::to_owned),
                path: req.path.map(str::to_owned),
                ..Head::default()
            };
            match read_headers(&mut h, req.headers) {
                Ok(()) => HeadParse::Done(h),
                Err(e) => HeadParse::Bad(e),
            }
        }
        Ok(httparse::Status::Partial) => partial(buf),
        Err(e) => HeadParse::Bad(format!("not an HTTP request head: {e}")),
    }
}

pub fn parse_response(buf: &[u8]) -> HeadParse {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
            let mut h = Head {
                len,
                status: resp.code,
                reason: resp.reason.map(str::to_owned),
                ..Head::default()
            };
            match read_headers(&mut h, resp.headers) {
                Ok(()) => HeadParse::Done(h),
                Err(e) => HeadParse::Bad(e),
            }
        }
        Ok(httparse::Status::Partial) => partial(buf),
        Err(e) => HeadParse::Bad(format!("not an HTTP response head: {e}")),
    }
}

fn partial(buf: &[u8]) -> HeadParse {
    if buf.len() > MAX_HEAD {
        HeadParse::Bad(format!("HTTP head longer than {MAX_HEAD} bytes"))
    } else {
        HeadParse::Need
    }
}

fn read_headers(h: &mut Head, headers: &[httparse::Header<'_>]) -> Result<(), String> {
    for hd in headers {
        let value = String::from_utf8_lossy(hd.value).trim().to_owned();
        let name = hd.name.to_ascii_lowercase();
        match name.as_str() {
            "content-length" => {
                let n = value
                    .parse::<u64>()
                    .map_err(|_| format!("bad Content-Length `{value}`"))?;
                if h.content_length.is_some_and(|old| old != n) {
                    return Err("conflicting Content-Length headers".into());
                }
                h.content_length = Some(n);
            }
            "transfer-encoding" => {
                // Chunked must be the last coding applied (RFC 9112 §6.1).
                h.chunked = value
                    .rsplit(',')
                    .next()
                    .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
            }
            "content-type" => h.content_type = Some(value),
            "upgrade" => {
                h.upgrade_ws = value
                    .split(',')
                    .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
            }
            "sec-websocket-protocol" => h.ws_protocol = Some(value),
            "x-tern-session" => h.session = Some(short_sid(&value)),
            _ => {}
        }
    }
    Ok(())
}

/// Whether a body is tern frames: its Content-Type says so, or, without one, `tern_path` (the
/// request was for a tunnel path, or was not captured).
pub fn is_tern_body(content_type: Option<&str>, tern_path: bool) -> bool {
    match content_type {
        Some(ct) => ct
            .split(';')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/x-tern")),
        None => tern_path,
    }
}

/// The first digits of a session id. The id is a bearer secret (SPEC.md §12 "HTTP tunnel"): dumps
/// end up in bug reports, so only the start of the routing part is shown, which identifies a
/// session within a capture without revealing any of its random part.
pub fn short_sid(sid: &str) -> String {
    match sid.get(..8) {
        Some(head) if sid.len() > 8 => format!("{head}…"),
        _ => sid.to_owned(),
    }
}

/// A request target with the `s=` parameter shortened.
pub fn short_path(path: &str) -> String {
    let Some((base, query)) = path.split_once('?') else {
        return path.to_owned();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some(("s", v)) => format!("s={}", short_sid(v)),
            _ => kv.to_owned(),
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

/// The session id in a request target, shortened.
pub fn path_session(path: &str) -> Option<String> {
    let (_, query) = path.split_once('?')?;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("s="))
        .map(short_sid)
}

/// Where a chunked body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunked {
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    Trailer,
}

/// One step through a chunked body.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Need,
    /// The first n bytes are body data.
    Data(usize),
    /// The first n bytes are framing.
    Skip(usize),
    /// The body ends after the first n bytes.
    Done(usize),
    Bad(String),
}

impl Chunked {
    pub fn step(&mut self, buf: &[u8]) -> Step {
        match *self {
            Chunked::Size => match httparse::parse_chunk_size(buf) {
                Ok(httparse::Status::Complete((n, size))) => {
                    *self = if size == 0 {
                        Chunked::Trailer
                    } else {
                        Chunked::Data(size)
                    };
                    Step::Skip(n)
                }
                Ok(httparse::Status::Partial) if buf.len() < 1024 => Step::Need,
                _ => Step::Bad("bad chunk size line".into()),
            },
            Chunked::Data(rem) => {
                if buf.is_empty() {
                    return Step::Need;
                }
                let n = rem.min(buf.len() as u64);
                let rem = rem - n;
                *self = if rem == 0 {
                    Chunked::DataEnd
                } else {
                    Chunked::Data(rem)
                };
                Step::Data(n as usize)
            }
            Chunked::DataEnd => match buf.get(..2) {
                None => Step::Need,
                Some(b"\r\n") => {
                    *self = Chunked::Size;
                    Step::Skip(2)
                }
                Some(_) => Step::Bad("chunk data not followed by CRLF".into()),
            },
            Chunked::Trailer => match buf.windows(2).position(|w| w == b"\r\n") {
                Some(0) => Step::Done(2),
                Some(i) => Step::Skip(i + 2),
                None if buf.len() < MAX_HEAD => Step::Need,
                None => Step::Bad("chunked trailer too long".into()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(input: &[u8]) -> (Vec<u8>, bool) {
        let mut c = Chunked::Size;
        let (mut pos, mut out) = (0, Vec::new());
        loop {
            match c.step(&input[pos..]) {
                Step::Need => return (out, false),
                Step::Data(n) => {
                    out.extend_from_slice(&input[pos..pos + n]);
                    pos += n;
                }
                Step::Skip(n) => pos += n,
                Step::Done(_) => return (out, true),
                Step::Bad(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn chunked_with_extension_and_trailer() {
        let (b, done) = body(b"5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n");
        assert_eq!(b, b"hello world");
        assert!(done);
        let (b, done) = body(b"5\r\nhel");
        assert_eq!(b, b"hel");
        assert!(!done);
    }

    #[test]
    fn session_ids_are_shortened() {
        let sid = "0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(
            short_path(&format!("/tern/up?s={sid}&n=3")),
            "/tern/up?s=01234567…&n=3"
        );
        assert_eq!(
            path_session(&format!("/tern/down?s={sid}")).as_deref(),
            Some("01234567…")
        );
        assert!(!short_path(&format!("/tern/up?s={sid}")).contains("89abcdef0"));
    }

    #[test]
    fn heads() {
        let HeadParse::Done(h) = parse_request(
            b"\r\nPOST /tern/open HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\nContent-Type: application/x-tern\r\n\r\nrest",
        ) else {
            panic!()
        };
        assert_eq!(h.method.as_deref(), Some("POST"));
        assert_eq!(h.content_length, Some(12));
        assert!(is_tern_body(h.content_type.as_deref(), false));
        assert!(matches!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Enc"),
            HeadParse::Need
        ));
        assert!(matches!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"),
            HeadParse::Bad(_)
        ));
    }
}
