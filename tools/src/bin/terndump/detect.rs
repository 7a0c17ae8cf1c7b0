//! What a connection is, from its first bytes (SPEC.md §12 "Listeners and detection"), and the
//! PROXY protocol headers (v1 text, v2 binary, as published by HAProxy) a load balancer may put
//! before them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const PROXY_V1: &[u8] = b"PROXY ";
const PROXY_V2: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// v1 headers are at most 107 bytes, CRLF included.
const PROXY_V1_MAX: usize = 107;

/// What the first bytes say.
#[derive(Debug)]
pub enum Class {
    /// Not enough bytes to tell.
    Need,
    Native,
    Tls,
    Http,
    /// A PROXY header of this many bytes; the connection is detected again after it.
    Proxy(usize, ProxyInfo),
    /// A PROXY signature with a header that cannot be read.
    BadProxy(String),
    /// Anything else: a server treats it as native (and answers BAD_MAGIC), so does the dump.
    Other,
}

/// What a PROXY header says.
#[derive(Debug, Clone)]
pub struct ProxyInfo {
    pub version: u8,
    /// False for v1 `UNKNOWN` and v2 `LOCAL` (health checks): the real peer stands.
    pub proxied: bool,
    pub client: Option<SocketAddr>,
    pub server: Option<SocketAddr>,
}

pub fn classify(b: &[u8]) -> Class {
    let Some(&first) = b.first() else {
        return Class::Need;
    };
    // PROXY and POST/PUT/PATCH share a first letter, and v2's signature is long: wait while the
    // bytes are still a prefix of a signature.
    for sig in [PROXY_V1, PROXY_V2] {
        if b.len() < sig.len() && sig.starts_with(b) {
            return Class::Need;
        }
    }
    if b.starts_with(PROXY_V1) {
        return proxy_v1(b);
    }
    if b.starts_with(PROXY_V2) {
        return proxy_v2(b);
    }
    match (first, b.get(1)) {
        (0xE7, None) | (0x16, None) => Class::Need,
        (0xE7, Some(0x4E)) => Class::Native,
        (0x16, Some(0x03)) => Class::Tls,
        (b'A'..=b'Z', _) => Class::Http,
        _ => Class::Other,
    }
}

fn proxy_v1(b: &[u8]) -> Class {
    let Some(end) = b.windows(2).position(|w| w == b"\r\n") else {
        return if b.len() < PROXY_V1_MAX {
            Class::Need
        } else {
            Class::BadProxy("PROXY v1 header without CRLF in 107 bytes".into())
        };
    };
    let Ok(line) = std::str::from_utf8(&b[..end]) else {
        return Class::BadProxy("PROXY v1 header is not text".into());
    };
    let parts: Vec<&str> = line.split(' ').collect();
    let info = match parts.as_slice() {
        ["PROXY", "UNKNOWN", ..] => ProxyInfo {
            version: 1,
            proxied: false,
            client: None,
            server: None,
        },
        ["PROXY", "TCP4" | "TCP6", src, dst, sport, dport] => {
            match (src.parse(), dst.parse(), sport.parse(), dport.parse()) {
                (Ok(s), Ok(d), Ok(sp), Ok(dp)) => ProxyInfo {
                    version: 1,
                    proxied: true,
                    client: Some(SocketAddr::new(s, sp)),
                    server: Some(SocketAddr::new(d, dp)),
                },
                _ => return Class::BadProxy(format!("bad PROXY v1 addresses in `{line}`")),
            }
        }
        _ => return Class::BadProxy(format!("bad PROXY v1 header `{line}`")),
    };
    Class::Proxy(end + 2, info)
}

fn proxy_v2(b: &[u8]) -> Class {
    let Some(h) = b.get(..16) else {
        return Class::Need;
    };
    let (ver_cmd, fam) = (h[12], h[13]);
    let len = usize::from(u16::from_be_bytes([h[14], h[15]]));
    let Some(addrs) = b.get(16..16 + len) else {
        return Class::Need;
    };
    if ver_cmd >> 4 != 2 {
        return Class::BadProxy(format!("PROXY v2 header with version {}", ver_cmd >> 4));
    }
    let (proxied, addrs) = match ver_cmd & 0x0f {
        0 => (false, None),
        1 => (true, v2_addresses(fam, addrs)),
        c => return Class::BadProxy(format!("PROXY v2 header with command {c}")),
    };
    let (client, server) = addrs.unzip();
    Class::Proxy(
        16 + len,
        ProxyInfo {
            version: 2,
            proxied,
            client,
            server,
        },
    )
}

/// Source and destination of a v2 header; `None` for families without IP addresses (UNIX,
/// UNSPEC), which still let the connection be decoded.
fn v2_addresses(fam: u8, a: &[u8]) -> Option<(SocketAddr, SocketAddr)> {
    let port = |i: usize| Some(u16::from_be_bytes([*a.get(i)?, *a.get(i + 1)?]));
    match fam >> 4 {
        1 => {
            let ip = |i: usize| -> Option<IpAddr> {
                let o: [u8; 4] = a.get(i..i + 4)?.try_into().ok()?;
                Some(Ipv4Addr::from(o).into())
            };
            Some((
                SocketAddr::new(ip(0)?, port(8)?),
                SocketAddr::new(ip(4)?, port(10)?),
            ))
        }
        2 => {
            let ip = |i: usize| -> Option<IpAddr> {
                let o: [u8; 16] = a.get(i..i + 16)?.try_into().ok()?;
                Some(Ipv6Addr::from(o).into())
            };
            Some((
                SocketAddr::new(ip(0)?, port(32)?),
                SocketAddr::new(ip(16)?, port(34)?),
            ))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn first_bytes() {
        assert!(matches!(classify(b""), Class::Need));
        assert!(matches!(classify(b"P"), Class::Need));
        assert!(matches!(classify(b"PRO"), Class::Need));
        assert!(matches!(classify(b"POST /"), Class::Http));
        assert!(matches!(classify(&[0xE7]), Class::Need));
        assert!(matches!(classify(&[0xE7, 0x4E, 1]), Class::Native));
        assert!(matches!(classify(&[0x16, 0x03, 1]), Class::Tls));
        assert!(matches!(classify(b"\r\n\r\n"), Class::Need));
        assert!(matches!(classify(b"\r\n\r\nX"), Class::Other));
        assert!(matches!(classify(&[0x00, 0x01]), Class::Other));
    }

    #[test]
    fn proxy_v1_header() {
        let b = b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 14000\r\n\xe7\x4e";
        let Class::Proxy(n, info) = classify(b) else {
            panic!()
        };
        assert_eq!(n, b.len() - 2);
        assert_eq!(info.client, Some("203.0.113.7:5555".parse().unwrap()));
        assert!(matches!(
            classify(b"PROXY TCP4 203.0.113.7 10.0.0.1 5555"),
            Class::Need
        ));
        assert!(matches!(
            classify(b"PROXY TCP4 x y 1 2\r\n"),
            Class::BadProxy(_)
        ));
    }

    #[test]
    fn proxy_v2_header() {
        let mut b = PROXY_V2.to_vec();
        b.extend_from_slice(&[
            0x21, 0x11, 0, 12, 198, 51, 100, 9, 10, 0, 0, 1, 0x1f, 0x90, 0x36, 0xb0,
        ]);
        for cut in 0..b.len() {
            assert!(matches!(classify(&b[..cut]), Class::Need), "cut {cut}");
        }
        let Class::Proxy(n, info) = classify(&b) else {
            panic!()
        };
        assert_eq!(n, 28);
        assert!(info.proxied);
        assert_eq!(info.client, Some("198.51.100.9:8080".parse().unwrap()));
        assert_eq!(info.server, Some("10.0.0.1:14000".parse().unwrap()));
    }
}
