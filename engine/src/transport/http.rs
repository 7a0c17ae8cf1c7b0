//! HTTP/1.1 pieces of the WebSocket upgrade and the tunnel (SPEC §12, "HTTP tunnel"): request
//! heads (httparse), answers, chunked encoding, tunnel routes and session ids.

use std::fmt;

/// Largest request head accepted.
pub const MAX_HEAD: usize = 8 * 1024;

/// A parsed request head. Header names are lowercased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    /// Bytes the head took, so the body starts here.
    pub len: usize,
}

/// Result of parsing the start of a buffer as a request head.
#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    NeedMore,
    Done(RequestHead),
    Invalid(String),
}

/// Parses the request head at the start of `buf`.
pub fn parse_request(buf: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            Head::Invalid("request head too large".into())
        }
        Ok(httparse::Status::Partial) => Head::NeedMore,
        Ok(httparse::Status::Complete(len)) => {
            if len > MAX_HEAD {
                return Head::Invalid("request head too large".into());
            }
            let target = req.path.unwrap_or("/");
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            // A request through a forward proxy names the absolute URI; keep its path.
            let path = match path.find("://") {
                Some(i) => path[i + 3..]
                    .find('/')
                    .map(|j| &path[i + 3 + j..])
                    .unwrap_or("/"),
                None => path,
            };
            Head::Done(RequestHead {
                method: req.method.unwrap_or("").to_owned(),
                path: path.to_owned(),
                query: query.to_owned(),
                headers: req
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect(),
                len,
            })
        }
        Err(e) => Head::Invalid(format!("bad request: {e}")),
    }
}

impl RequestHead {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether a header's comma-separated value list contains `token` (case-insensitive).
    pub fn header_has(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .any(|(_, v)| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }

    /// A query parameter's value.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then_some(v)
        })
    }

    /// Whether this asks for a WebSocket.
    pub fn is_websocket(&self) -> bool {
        self.header_has("upgrade", "websocket") && self.header_has("connection", "upgrade")
    }

    /// Whether the client wants the connection closed after the answer.
    pub fn wants_close(&self) -> bool {
        self.header_has("connection", "close")
    }

    /// The body length: `Ok(None)` without a body, `Err` for a chunked or malformed one (tunnel
    /// clients send `Content-Length`, so chunked request bodies are refused with 411).
    pub fn body_len(&self) -> Result<usize, u16> {
        if self.header("transfer-encoding").is_some() {
            return Err(411);
        }
        match self.header("content-length") {
            None => Ok(0),
            Some(v) => v.trim().parse().map_err(|_| 400),
        }
    }
}

/// The reason phrase of the statuses the node sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// A complete answer with a `Content-Length` body.
pub fn response(status: u16, headers: &[(&str, &str)], body: &[u8], close: bool) -> Vec<u8> {
    let mut r = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (k, v) in headers {
        r.push_str(k);
        r.push_str(": ");
        r.push_str(v);
        r.push_str("\r\n");
    }
    if status != 204 {
        r.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    if close {
        r.push_str("Connection: close\r\n");
    }
    r.push_str("\r\n");
    let mut out = r.into_bytes();
    out.extend_from_slice(body);
    out
}

/// The head of a chunked, streamed answer.
pub fn stream_head(status: u16, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut r = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (k, v) in headers {
        r.push_str(k);
        r.push_str(": ");
        r.push_str(v);
        r.push_str("\r\n");
    }
    r.push_str("Transfer-Encoding: chunked\r\n\r\n");
    r.into_bytes()
}

/// Appends `data` as one chunk (nothing for empty data: an empty chunk ends the body).
pub fn chunk(data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk of a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// A tunnel session id: the routing part names the core and connection holding the session; the
/// secret is 128 random bits, so an id cannot be guessed (SPEC §12).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Sid {
    pub core: u16,
    pub conn: u32,
    pub secret: [u8; 16],
}

impl fmt::Debug for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret stays out of logs.
        write!(f, "Sid({}.{})", self.core, self.conn)
    }
}

impl fmt::Display for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}{:08x}0000{}",
            self.core,
            self.conn,
            hex::encode(self.secret)
        )
    }
}

impl Sid {
    /// Parses the 48-digit form; `None` for anything else.
    pub fn parse(s: &str) -> Option<Sid> {
        if s.len() != 48 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let core = u16::from_str_radix(&s[0..4], 16).ok()?;
        let conn = u32::from_str_radix(&s[4..12], 16).ok()?;
        let mut secret = [0u8; 16];
        hex::decode_to_slice(&s[16..48], &mut secret).ok()?;
        Some(Sid { core, conn, secret })
    }

    /// Whether `secret` is this id's secret (see [`secrets_equal`]).
    pub fn secret_matches(&self, secret: &[u8; 16]) -> bool {
        secrets_equal(&self.secret, secret)
    }
}

/// Compares session secrets without an early exit, so timing does not reveal a matching prefix.
pub fn secrets_equal(a: &[u8; 16], b: &[u8; 16]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Default and largest long-poll wait, seconds.
pub const POLL_WAIT_DEFAULT: u64 = 25;
pub const POLL_WAIT_MAX: u64 = 60;

/// What a tunnel request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Open {
        poll: bool,
    },
    Up {
        sid: Sid,
        n: u64,
    },
    Down {
        sid: Sid,
    },
    Poll {
        sid: Sid,
        wait_secs: u64,
    },
    Close {
        sid: Sid,
    },
    /// A known path without `s`.
    NoSession,
    /// `s` present but malformed.
    BadSession,
    NotFound,
    MethodNotAllowed,
    BadRequest(&'static str),
}

/// Maps a request head to a tunnel route.
pub fn route(head: &RequestHead) -> Route {
    let method = head.method.as_str();
    let want = match head.path.as_str() {
        "/tern/open" | "/tern/up" | "/tern/close" => "POST",
        "/tern/down" | "/tern/poll" => "GET",
        _ => return Route::NotFound,
    };
    if method != want {
        return Route::MethodNotAllowed;
    }
    if head.path == "/tern/open" {
        return Route::Open {
            poll: head.param("mode") == Some("poll"),
        };
    }
    let sid = match head.param("s") {
        None | Some("") => return Route::NoSession,
        Some(s) => match Sid::parse(s) {
            Some(sid) => sid,
            None => return Route::BadSession,
        },
    };
    match head.path.as_str() {
        "/tern/up" => match head.param("n").map(str::parse::<u64>) {
            Some(Ok(n)) => Route::Up { sid, n },
            _ => Route::BadRequest("n missing or not a number"),
        },
        "/tern/down" => Route::Down { sid },
        "/tern/poll" => {
            let wait_secs = match head.param("wait").map(str::parse::<u64>) {
                None => POLL_WAIT_DEFAULT,
                Some(Ok(w)) => w.min(POLL_WAIT_MAX),
                Some(Err(_)) => return Route::BadRequest("wait is not a number"),
            };
            Route::Poll { sid, wait_secs }
        }
        _ => Route::Close { sid },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn head(s: &str) -> RequestHead {
        match parse_request(s.as_bytes()) {
            Head::Done(h) => h,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn heads_parse_with_absolute_uris_and_params() {
        assert_eq!(parse_request(b"GET /tern/do"), Head::NeedMore);
        let h = head("POST http://node:8080/tern/up?s=abc&n=3 HTTP/1.1\r\nHost: node\r\nContent-Length: 5\r\n\r\nhello");
        assert_eq!(h.path, "/tern/up");
        assert_eq!(h.param("n"), Some("3"));
        assert_eq!(h.param("s"), Some("abc"));
        assert_eq!(h.body_len(), Ok(5));
        assert_eq!(h.len, "POST http://node:8080/tern/up?s=abc&n=3 HTTP/1.1\r\nHost: node\r\nContent-Length: 5\r\n\r\n".len());
        let ws = head("GET /tern/ws HTTP/1.1\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\n\r\n");
        assert!(ws.is_websocket());
        let chunked = head("POST /tern/up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(chunked.body_len(), Err(411));
        assert!(matches!(
            parse_request(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"),
            Head::Invalid(_)
        ));
        let big = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
        assert!(matches!(parse_request(big.as_bytes()), Head::Invalid(_)));
    }

    #[test]
    fn session_ids_round_trip_and_compare_secrets() {
        let sid = Sid {
            core: 1,
            conn: 0xdead_beef,
            secret: [7; 16],
        };
        let s = sid.to_string();
        assert_eq!(s.len(), 48);
        assert_eq!(Sid::parse(&s), Some(sid));
        assert!(sid.secret_matches(&[7; 16]));
        let mut other = [7; 16];
        other[15] = 8;
        assert!(!sid.secret_matches(&other));
        assert_eq!(Sid::parse(&s[1..]), None);
        assert_eq!(Sid::parse(&s.to_uppercase()), None);
        assert!(!format!("{sid:?}").contains("0707"));
    }

    #[test]
    fn routes_follow_the_spec_table() {
        let sid = Sid {
            core: 0,
            conn: 5,
            secret: [1; 16],
        };
        let r = |s: &str| route(&head(s));
        assert_eq!(
            r("POST /tern/open HTTP/1.1\r\n\r\n"),
            Route::Open { poll: false }
        );
        assert_eq!(
            r("POST /tern/open?mode=poll HTTP/1.1\r\n\r\n"),
            Route::Open { poll: true }
        );
        assert_eq!(
            r(&format!("POST /tern/up?s={sid}&n=2 HTTP/1.1\r\n\r\n")),
            Route::Up { sid, n: 2 }
        );
        assert_eq!(
            r(&format!("GET /tern/poll?s={sid}&wait=999 HTTP/1.1\r\n\r\n")),
            Route::Poll { sid, wait_secs: 60 }
        );
        assert_eq!(
            r(&format!("GET /tern/down?s={sid} HTTP/1.1\r\n\r\n")),
            Route::Down { sid }
        );
        assert_eq!(r("GET /tern/down HTTP/1.1\r\n\r\n"), Route::NoSession);
        assert_eq!(r("GET /tern/down?s=zz HTTP/1.1\r\n\r\n"), Route::BadSession);
        assert_eq!(r("GET /tern/up HTTP/1.1\r\n\r\n"), Route::MethodNotAllowed);
        assert_eq!(r("GET /index.html HTTP/1.1\r\n\r\n"), Route::NotFound);
    }

    #[test]
    fn chunks_and_answers_are_well_formed() {
        let mut out = Vec::new();
        chunk(b"", &mut out);
        assert!(out.is_empty());
        chunk(&[0u8; 26], &mut out);
        assert!(out.starts_with(b"1a\r\n"));
        assert!(out.ends_with(b"\r\n"));
        let r = response(403, &[("X-A", "b")], b"no", true);
        assert_eq!(
            r,
            b"HTTP/1.1 403 Forbidden\r\nX-A: b\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno"
        );
    }
}
