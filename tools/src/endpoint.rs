//! Where a client connects: a *rung* is one transport at one address, written as a URL
//! (`tern://host:14000`, `tls://host:443`, `ws://host:8080/tern/ws`, `wss://host/tern/ws`,
//! `http://host:8080` for the tunnel, `https://host` for the tunnel in TLS); [`Endpoints`] is the
//! ladder of rungs a client walks in order, each with its own timeout, starting with the rung
//! that worked last (SPEC §12, issue 7).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use tern_protocol::ErrorCode;

use crate::connection::{Connection, ConnectionError, HelloParams};
use crate::transport::TransportOptions;

/// The default native port.
pub const NATIVE_PORT: u16 = 14000;
/// The default WebSocket path.
pub const WS_PATH: &str = "/tern/ws";
/// How long one rung may take to reach WELCOME unless told otherwise.
pub const DEFAULT_RUNG_TIMEOUT: Duration = Duration::from_secs(5);
/// REDIRECTs followed in a row; one more is a failure (SPEC §REDIRECT: "more than 3").
pub const MAX_REDIRECTS: usize = 3;

/// A transport of SPEC §12.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// Native frames over TCP (`tern://`).
    Native,
    /// Native frames in TLS, ALPN `tern/1` (`tls://`).
    Tls,
    /// WebSocket over TCP (`ws://`).
    Ws,
    /// WebSocket in TLS (`wss://`).
    Wss,
    /// The HTTP tunnel over TCP (`http://`).
    Tunnel,
    /// The HTTP tunnel in TLS (`https://`).
    TunnelTls,
}

impl TransportKind {
    /// Every kind, in ladder order.
    pub const ALL: [TransportKind; 6] = [
        TransportKind::Native,
        TransportKind::Tls,
        TransportKind::Ws,
        TransportKind::Wss,
        TransportKind::Tunnel,
        TransportKind::TunnelTls,
    ];

    /// The URL scheme.
    pub fn scheme(self) -> &'static str {
        match self {
            TransportKind::Native => "tern",
            TransportKind::Tls => "tls",
            TransportKind::Ws => "ws",
            TransportKind::Wss => "wss",
            TransportKind::Tunnel => "http",
            TransportKind::TunnelTls => "https",
        }
    }

    /// The kind a URL scheme names (`tcp` is an alias of `tern`).
    pub fn from_scheme(s: &str) -> Option<TransportKind> {
        let s = s.to_ascii_lowercase();
        Some(match s.as_str() {
            "tern" | "tcp" => TransportKind::Native,
            "tls" | "terns" => TransportKind::Tls,
            _ => TransportKind::ALL
                .into_iter()
                .find(|k| k.scheme() == s.as_str())?,
        })
    }

    /// The port a URL without one means.
    pub fn default_port(self) -> u16 {
        match self {
            TransportKind::Native => NATIVE_PORT,
            TransportKind::Ws | TransportKind::Tunnel => 80,
            TransportKind::Tls | TransportKind::Wss | TransportKind::TunnelTls => 443,
        }
    }

    /// Whether the transport runs in TLS.
    pub fn uses_tls(self) -> bool {
        matches!(
            self,
            TransportKind::Tls | TransportKind::Wss | TransportKind::TunnelTls
        )
    }

    /// Whether the transport is the HTTP tunnel.
    pub fn is_tunnel(self) -> bool {
        matches!(self, TransportKind::Tunnel | TransportKind::TunnelTls)
    }

    /// Whether the transport is WebSocket.
    pub fn is_websocket(self) -> bool {
        matches!(self, TransportKind::Ws | TransportKind::Wss)
    }
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.scheme())
    }
}

/// How the tunnel receives: a streamed `down` response, long polls, or stream with a fallback
/// to polls when the stream delivers nothing (a proxy buffering responses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TunnelMode {
    #[default]
    Auto,
    Stream,
    Poll,
}

impl TunnelMode {
    fn name(self) -> &'static str {
        match self {
            TunnelMode::Auto => "auto",
            TunnelMode::Stream => "stream",
            TunnelMode::Poll => "poll",
        }
    }
}

/// Why an endpoint string is not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("empty server address")]
    Empty,
    #[error("{0:?}: unknown scheme (tern, tls, ws, wss, http, https)")]
    UnknownScheme(String),
    #[error("{0:?}: missing host")]
    MissingHost(String),
    #[error("{0:?}: bad port")]
    BadPort(String),
    #[error("{input:?}: bad option {option:?}")]
    BadOption { input: String, option: String },
    #[error("{0:?}: a path is only meaningful for ws, wss, http and https")]
    UnexpectedPath(String),
}

/// One transport at one address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rung {
    pub kind: TransportKind,
    /// A DNS name or an IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// WebSocket: the request path (default `/tern/ws`). Tunnel: a prefix put before
    /// `/tern/open` etc., for a reverse proxy that mounts the node under a path ("" by default).
    pub path: String,
    /// Tunnel only (`?mode=stream|poll|auto`).
    pub tunnel_mode: TunnelMode,
    /// TLS server name, when it differs from `host` (`?sni=name`).
    pub server_name: Option<String>,
    /// This rung's timeout, overriding the ladder's (`?timeout=2.5`, seconds).
    pub timeout: Option<Duration>,
}

impl Rung {
    /// A rung with the kind's defaults.
    pub fn new(kind: TransportKind, host: impl Into<String>, port: u16) -> Rung {
        Rung {
            kind,
            host: host.into(),
            port,
            path: if kind.is_websocket() {
                WS_PATH.to_owned()
            } else {
                String::new()
            },
            tunnel_mode: TunnelMode::Auto,
            server_name: None,
            timeout: None,
        }
    }

    /// Parses a URL, or `host:port` (native).
    pub fn parse(input: &str) -> Result<Rung, EndpointError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(EndpointError::Empty);
        }
        let (kind, rest) = match s.split_once("://") {
            Some((scheme, rest)) => (
                TransportKind::from_scheme(scheme)
                    .ok_or_else(|| EndpointError::UnknownScheme(input.to_owned()))?,
                rest,
            ),
            None => (TransportKind::Native, s),
        };
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let (host, port) = split_host_port(authority, input)?;
        let mut rung = Rung::new(kind, host, port.unwrap_or(kind.default_port()));
        let path = path.trim_end_matches('/');
        if !path.is_empty() {
            if kind.is_websocket() || kind.is_tunnel() {
                rung.path = path.to_owned();
            } else {
                return Err(EndpointError::UnexpectedPath(input.to_owned()));
            }
        }
        for option in query.split('&').filter(|o| !o.is_empty()) {
            let bad = || EndpointError::BadOption {
                input: input.to_owned(),
                option: option.to_owned(),
            };
            let (key, value) = option.split_once('=').ok_or_else(bad)?;
            match key {
                "mode" if kind.is_tunnel() => {
                    rung.tunnel_mode = match value {
                        "auto" => TunnelMode::Auto,
                        "stream" => TunnelMode::Stream,
                        "poll" => TunnelMode::Poll,
                        _ => return Err(bad()),
                    }
                }
                "sni" if kind.uses_tls() && !value.is_empty() => {
                    rung.server_name = Some(value.to_owned())
                }
                "timeout" => {
                    let secs: f64 = value.parse().map_err(|_| bad())?;
                    rung.timeout = Some(Duration::try_from_secs_f64(secs).map_err(|_| bad())?);
                }
                _ => return Err(bad()),
            }
        }
        Ok(rung)
    }

    /// `host:port`, with brackets around an IPv6 address.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The name TLS sends and checks.
    pub fn tls_name(&self) -> &str {
        self.server_name.as_deref().unwrap_or(&self.host)
    }

    /// This rung's timeout, or `default`.
    pub fn timeout_or(&self, default: Duration) -> Duration {
        self.timeout.unwrap_or(default)
    }
}

fn split_host_port<'a>(
    authority: &'a str,
    input: &str,
) -> Result<(&'a str, Option<u16>), EndpointError> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| EndpointError::MissingHost(input.to_owned()))?;
        match after {
            "" => (host, None),
            p => (
                host,
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| EndpointError::BadPort(input.to_owned()))?,
                ),
            ),
        }
    } else if authority.matches(':').count() > 1 {
        // A bare IPv6 address: no port can be told apart.
        (authority, None)
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(EndpointError::MissingHost(input.to_owned()));
    }
    let port = match port {
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| EndpointError::BadPort(input.to_owned()))?,
        ),
        None => None,
    };
    Ok((host, port))
}

impl FromStr for Rung {
    type Err = EndpointError;
    fn from_str(s: &str) -> Result<Rung, EndpointError> {
        Rung::parse(s)
    }
}

/// The canonical URL; parsing it gives the same rung back.
impl fmt::Display for Rung {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.kind, self.authority(), self.path)?;
        let mut sep = '?';
        let mut opt = |f: &mut fmt::Formatter<'_>, kv: String| {
            let r = write!(f, "{sep}{kv}");
            sep = '&';
            r
        };
        if self.kind.is_tunnel() && self.tunnel_mode != TunnelMode::Auto {
            opt(f, format!("mode={}", self.tunnel_mode.name()))?;
        }
        if let Some(sni) = &self.server_name {
            opt(f, format!("sni={sni}"))?;
        }
        if let Some(t) = self.timeout {
            opt(f, format!("timeout={}", t.as_secs_f64()))?;
        }
        Ok(())
    }
}

/// The default ladder for a host: native on 14000, native in TLS on 443, the HTTP tunnel on 80
/// and on 8080 (SPEC §12's listeners as production places them, then the `--http` default).
pub fn default_ladder(host: &str) -> Vec<Rung> {
    vec![
        Rung::new(TransportKind::Native, host, NATIVE_PORT),
        Rung::new(TransportKind::Tls, host, 443),
        Rung::new(TransportKind::Tunnel, host, 80),
        Rung::new(TransportKind::Tunnel, host, 8080),
    ]
}

/// The ladder a client walks: rungs in order, the one that worked last first.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub rungs: Vec<Rung>,
    /// Timeout of a rung that has none of its own: TCP connect, TLS, HTTP/WebSocket handshake
    /// and HELLO/WELCOME must all fit in it.
    pub rung_timeout: Duration,
    /// TLS trust, proxy.
    pub options: TransportOptions,
    last_good: Option<usize>,
}

/// One rung that failed during a walk.
#[derive(Debug)]
pub struct RungFailure {
    pub rung: Rung,
    pub error: ConnectionError,
}

impl fmt::Display for RungFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.rung, self.error)
    }
}

impl Endpoints {
    /// A ladder of these rungs, in this order.
    pub fn new(rungs: Vec<Rung>) -> Endpoints {
        Endpoints {
            rungs,
            rung_timeout: DEFAULT_RUNG_TIMEOUT,
            options: TransportOptions::default(),
            last_good: None,
        }
    }

    /// Parses server addresses separated by commas or whitespace. Each is a rung URL or
    /// `host:port` (native); a bare host (no scheme, no port) stands for [`default_ladder`].
    pub fn parse(list: &str) -> Result<Endpoints, EndpointError> {
        Endpoints::parse_all([list])
    }

    /// As [`Endpoints::parse`], for several strings (a repeated `--server`).
    pub fn parse_all<I, S>(lists: I) -> Result<Endpoints, EndpointError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut rungs = Vec::new();
        for list in lists {
            for item in list
                .as_ref()
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|s| !s.is_empty())
            {
                if is_bare_host(item) {
                    rungs.extend(default_ladder(
                        item.trim_start_matches('[').trim_end_matches(']'),
                    ));
                } else {
                    rungs.push(Rung::parse(item)?);
                }
            }
        }
        if rungs.is_empty() {
            return Err(EndpointError::Empty);
        }
        Ok(Endpoints::new(rungs))
    }

    /// Sets the transport options (builder style).
    pub fn with_options(mut self, options: TransportOptions) -> Endpoints {
        self.options = options;
        self
    }

    /// Sets the default rung timeout (builder style).
    pub fn with_rung_timeout(mut self, timeout: Duration) -> Endpoints {
        self.rung_timeout = timeout;
        self
    }

    /// The rung that worked last, tried first.
    pub fn remembered(&self) -> Option<&Rung> {
        self.last_good.and_then(|i| self.rungs.get(i))
    }

    /// Prefers the rung whose URL is `url` (as [`Rung`]'s `Display` writes it, e.g. read back
    /// from a state file). Returns whether such a rung is in the ladder; if not, nothing changes.
    pub fn remember(&mut self, url: &str) -> bool {
        let Ok(wanted) = Rung::parse(url) else {
            return false;
        };
        match self.rungs.iter().position(|r| *r == wanted) {
            Some(i) => {
                self.last_good = Some(i);
                true
            }
            None => false,
        }
    }

    /// Forgets the remembered rung.
    pub fn forget(&mut self) {
        self.last_good = None;
    }

    /// Indexes of the rungs in the order they are tried.
    pub fn attempt_order(&self) -> Vec<usize> {
        let first = self.last_good.filter(|i| *i < self.rungs.len());
        first
            .into_iter()
            .chain((0..self.rungs.len()).filter(|i| Some(*i) != first))
            .collect()
    }

    /// Walks the ladder: each rung gets its timeout to reach WELCOME; the first that does is
    /// remembered and its connection returned. A refusal of the token (AUTH_INVALID,
    /// AUTH_EXPIRED) ends the walk at once: another transport would be refused the same way.
    /// A REDIRECT is followed at once (up to [`MAX_REDIRECTS`] in a row, each hop with the
    /// rung's timeout); the rung remembered is the one the walk entered by, since the node a
    /// user is redirected to changes with the cluster's membership.
    pub fn connect(&mut self, hello: &HelloParams) -> Result<Connection, ConnectionError> {
        self.walk(|rung, options, timeout| Connection::connect_rung(rung, options, hello, timeout))
    }

    /// Walks the ladder with `attempt` (tests and tools that speak their own handshake).
    pub fn walk(
        &mut self,
        mut attempt: impl FnMut(
            &Rung,
            &TransportOptions,
            Duration,
        ) -> Result<Connection, ConnectionError>,
    ) -> Result<Connection, ConnectionError> {
        let mut failures = Vec::new();
        for i in self.attempt_order() {
            let rung = &self.rungs[i];
            let timeout = rung.timeout_or(self.rung_timeout);
            let result = match attempt(rung, &self.options, timeout) {
                Err(ConnectionError::Redirected { addrs, .. }) => {
                    follow_redirects(rung, addrs, &self.options, timeout, &mut attempt)
                }
                other => other,
            };
            match result {
                Ok(conn) => {
                    self.last_good = Some(i);
                    return Ok(conn);
                }
                Err(e) if is_final(&e) => return Err(e),
                Err(error) => failures.push(RungFailure {
                    rung: rung.clone(),
                    error,
                }),
            }
        }
        // A single rung keeps its own error, so callers see what they saw before ladders.
        if failures.len() == 1 {
            if let Some(f) = failures.pop() {
                return Err(f.error);
            }
        }
        Err(ConnectionError::AllRungsFailed(failures))
    }
}

/// Follows the REDIRECT a HELLO at `from` got, and the ones after it, up to [`MAX_REDIRECTS`].
fn follow_redirects(
    from: &Rung,
    mut addrs: Vec<(tern_protocol::Transport, String)>,
    options: &TransportOptions,
    timeout: Duration,
    attempt: &mut impl FnMut(&Rung, &TransportOptions, Duration) -> Result<Connection, ConnectionError>,
) -> Result<Connection, ConnectionError> {
    let mut current = from.clone();
    for _ in 0..MAX_REDIRECTS {
        let Some(next) = redirect_rung(&current, &addrs) else {
            return Err(ConnectionError::Unexpected(
                "REDIRECT lists no transport this client speaks".into(),
            ));
        };
        match attempt(&next, options, timeout) {
            Err(ConnectionError::Redirected { addrs: more, .. }) => {
                addrs = more;
                current = next;
            }
            other => return other,
        }
    }
    Err(ConnectionError::TooManyRedirects(MAX_REDIRECTS + 1))
}

/// Where to go for a REDIRECT received on `current`: the listed address of the transport in
/// use if there is one (a client that came over TLS or HTTP because other ports are blocked
/// would be blocked on them at the next node too; SPEC §REDIRECT allows the preference), else
/// the first listed transport this client speaks. The rung keeps `current`'s timeout and
/// tunnel mode.
pub fn redirect_rung(current: &Rung, addrs: &[(tern_protocol::Transport, String)]) -> Option<Rung> {
    use tern_protocol::Transport as T;
    // The REDIRECT transport a kind travels on (TLS kinds all go to the TLS listener).
    let carrier = |k: TransportKind| match k {
        TransportKind::Native => T::NATIVE,
        TransportKind::Tls | TransportKind::Wss | TransportKind::TunnelTls => T::TLS,
        TransportKind::Ws => T::WEBSOCKET,
        TransportKind::Tunnel => T::HTTP_TUNNEL,
    };
    let kind_of = |t: T| match t {
        T::NATIVE => Some(TransportKind::Native),
        T::TLS => Some(TransportKind::Tls),
        T::WEBSOCKET => Some(TransportKind::Ws),
        T::HTTP_TUNNEL => Some(TransportKind::Tunnel),
        _ => None,
    };
    let (kind, addr) = addrs
        .iter()
        .find(|(t, _)| *t == carrier(current.kind))
        .map(|(_, a)| (current.kind, a))
        .or_else(|| addrs.iter().find_map(|(t, a)| kind_of(*t).map(|k| (k, a))))?;
    let mut rung = Rung::parse(&format!("{}://{addr}", kind.scheme())).ok()?;
    if kind == current.kind && (kind.is_websocket() || kind.is_tunnel()) {
        rung.path = current.path.clone();
    }
    rung.tunnel_mode = current.tunnel_mode;
    rung.timeout = current.timeout;
    Some(rung)
}

/// Errors that no other rung can cure.
fn is_final(e: &ConnectionError) -> bool {
    e.code()
        .is_some_and(|c| c == ErrorCode::AUTH_INVALID || c == ErrorCode::AUTH_EXPIRED)
}

/// `example.com` or `10.0.0.1` or `[::1]`: no scheme, no port, no path.
fn is_bare_host(s: &str) -> bool {
    if s.contains("://") || s.contains('/') {
        return false;
    }
    if let Some(inner) = s.strip_prefix('[') {
        return inner.ends_with(']');
    }
    // A bare IPv6 address has several colons; host:port has one.
    !s.contains(':') || s.matches(':').count() > 1
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn redirects_prefer_the_transport_in_use_and_stop_after_three() {
        use tern_protocol::Transport as T;
        let addrs = vec![
            (T::NATIVE, "10.0.0.2:14000".to_owned()),
            (T::TLS, "10.0.0.2:14443".to_owned()),
            (T::WEBSOCKET, "10.0.0.2:8080".to_owned()),
            (T::HTTP_TUNNEL, "10.0.0.2:8080".to_owned()),
        ];
        let go = |from: &str| {
            redirect_rung(&Rung::parse(from).unwrap(), &addrs)
                .unwrap()
                .to_string()
        };
        assert_eq!(
            go("127.0.0.1:14000"),
            Rung::parse("tern://10.0.0.2:14000").unwrap().to_string()
        );
        assert_eq!(
            go("tls://a:443"),
            Rung::parse("tls://10.0.0.2:14443").unwrap().to_string()
        );
        assert_eq!(
            go("wss://a/x/ws"),
            Rung::parse("wss://10.0.0.2:14443/x/ws")
                .unwrap()
                .to_string()
        );
        assert_eq!(
            go("http://a:80?mode=poll"),
            Rung::parse("http://10.0.0.2:8080?mode=poll")
                .unwrap()
                .to_string()
        );
        // Only unknown transports and TLS listed: a native client goes to TLS.
        let tls_only = [
            (T(9), "x:1".to_owned()),
            (T::TLS, "10.0.0.3:443".to_owned()),
        ];
        let r = redirect_rung(&Rung::parse("a:1").unwrap(), &tls_only).unwrap();
        assert_eq!((r.kind, r.port), (TransportKind::Tls, 443));
        assert!(redirect_rung(&Rung::parse("a:1").unwrap(), &[(T(9), "x:1".into())]).is_none());

        // A cluster that keeps redirecting: the first HELLO and three followed, then failure.
        let mut tries = 0;
        let mut e = Endpoints::parse("127.0.0.1:1").unwrap();
        let err = e
            .walk(|_, _, _| {
                tries += 1;
                Err(ConnectionError::Redirected {
                    epoch: 7,
                    addrs: vec![(T::NATIVE, "127.0.0.1:2".into())],
                })
            })
            .unwrap_err();
        assert!(matches!(err, ConnectionError::TooManyRedirects(4)), "{err}");
        assert_eq!(tries, 1 + MAX_REDIRECTS);
    }

    #[test]
    fn parses_every_form() {
        let r = Rung::parse("127.0.0.1:14000").unwrap();
        assert_eq!(
            (r.kind, r.host.as_str(), r.port),
            (TransportKind::Native, "127.0.0.1", 14000)
        );
        let r = Rung::parse("tern://127.0.0.1:15000").unwrap();
        assert_eq!((r.kind, r.port), (TransportKind::Native, 15000));
        let r = Rung::parse("tls://chat.example.com").unwrap();
        assert_eq!((r.kind, r.port), (TransportKind::Tls, 443));
        let r = Rung::parse("ws://host:8080/tern/ws").unwrap();
        assert_eq!(
            (r.kind, r.port, r.path.as_str()),
            (TransportKind::Ws, 8080, "/tern/ws")
        );
        let r = Rung::parse("ws://host:8080").unwrap();
        assert_eq!(r.path, WS_PATH);
        let r = Rung::parse("wss://host/other/").unwrap();
        assert_eq!(
            (r.kind, r.port, r.path.as_str()),
            (TransportKind::Wss, 443, "/other")
        );
        let r = Rung::parse("http://host:8080").unwrap();
        assert_eq!(
            (r.kind, r.port, r.path.as_str(), r.tunnel_mode),
            (TransportKind::Tunnel, 8080, "", TunnelMode::Auto)
        );
        let r =
            Rung::parse("https://host/chat?mode=poll&sni=chat.example.com&timeout=1.5").unwrap();
        assert_eq!(
            (r.kind, r.port, r.path.as_str(), r.tunnel_mode),
            (TransportKind::TunnelTls, 443, "/chat", TunnelMode::Poll)
        );
        assert_eq!(r.tls_name(), "chat.example.com");
        assert_eq!(r.timeout, Some(Duration::from_millis(1500)));
        let r = Rung::parse("tls://[::1]:14443").unwrap();
        assert_eq!((r.host.as_str(), r.port), ("::1", 14443));
        assert_eq!(r.authority(), "[::1]:14443");
        assert_eq!(
            Rung::parse("HTTP://h:1").unwrap().kind,
            TransportKind::Tunnel
        );
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(Rung::parse(" "), Err(EndpointError::Empty));
        assert!(matches!(
            Rung::parse("ftp://h:1"),
            Err(EndpointError::UnknownScheme(_))
        ));
        assert!(matches!(
            Rung::parse("tls://:443"),
            Err(EndpointError::MissingHost(_))
        ));
        assert!(matches!(Rung::parse("h:0"), Err(EndpointError::BadPort(_))));
        assert!(matches!(
            Rung::parse("h:99999"),
            Err(EndpointError::BadPort(_))
        ));
        assert!(matches!(Rung::parse("h:x"), Err(EndpointError::BadPort(_))));
        assert!(matches!(
            Rung::parse("tern://h:1/path"),
            Err(EndpointError::UnexpectedPath(_))
        ));
        assert!(matches!(
            Rung::parse("http://h:1?mode=fast"),
            Err(EndpointError::BadOption { .. })
        ));
        assert!(matches!(
            Rung::parse("tern://h:1?mode=poll"),
            Err(EndpointError::BadOption { .. })
        ));
        assert!(matches!(
            Rung::parse("tls://h:1?timeout=-1"),
            Err(EndpointError::BadOption { .. })
        ));
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "tern://127.0.0.1:14000",
            "tls://h:443",
            "ws://h:8080/tern/ws",
            "wss://[::1]:443/x",
            "http://h:8080",
            "https://h:443/p?mode=stream&sni=n&timeout=0.25",
        ] {
            let r = Rung::parse(s).unwrap();
            assert_eq!(r.to_string(), s);
            assert_eq!(Rung::parse(&r.to_string()).unwrap(), r);
        }
        assert_eq!(
            Rung::parse("h:1").unwrap().to_string(),
            "tern://h:1",
            "host:port is written with its scheme"
        );
    }

    #[test]
    fn lists_and_bare_hosts() {
        let e = Endpoints::parse("a:1, tls://b:2 ,http://c:3").unwrap();
        let urls: Vec<String> = e.rungs.iter().map(ToString::to_string).collect();
        assert_eq!(urls, ["tern://a:1", "tls://b:2", "http://c:3"]);
        let e = Endpoints::parse_all(["a:1", "b:2,c:3"]).unwrap();
        assert_eq!(e.rungs.len(), 3);
        let e = Endpoints::parse("example.com").unwrap();
        let kinds: Vec<(TransportKind, u16)> = e.rungs.iter().map(|r| (r.kind, r.port)).collect();
        assert_eq!(
            kinds,
            [
                (TransportKind::Native, 14000),
                (TransportKind::Tls, 443),
                (TransportKind::Tunnel, 80),
                (TransportKind::Tunnel, 8080)
            ]
        );
        assert_eq!(Endpoints::parse("::1").unwrap().rungs[0].host, "::1");
        assert_eq!(
            Endpoints::parse("[::1]").unwrap().rungs[1].authority(),
            "[::1]:443"
        );
        assert!(matches!(Endpoints::parse(" , "), Err(EndpointError::Empty)));
        assert!(Endpoints::parse("a:1,ftp://b").is_err());
    }

    #[test]
    fn remembered_rung_goes_first() {
        let mut e = Endpoints::parse("a:1,b:2,c:3").unwrap();
        assert_eq!(e.attempt_order(), [0, 1, 2]);
        assert!(e.remember("tern://c:3"));
        assert_eq!(e.attempt_order(), [2, 0, 1]);
        assert_eq!(e.remembered().map(|r| r.port), Some(3));
        assert!(!e.remember("tern://d:4"));
        assert_eq!(
            e.attempt_order(),
            [2, 0, 1],
            "an unknown rung changes nothing"
        );
        e.forget();
        assert_eq!(e.attempt_order(), [0, 1, 2]);
    }
}
