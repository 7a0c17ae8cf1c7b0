//! PROXY protocol v1/v2 headers from trusted load balancers (SPEC §12, "PROXY protocol"),
//! parsed with the `ppp` crate.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use ppp::{HeaderResult, PartialResult};
use thiserror::Error;

/// A CIDR block of trusted sources, e.g. `10.0.0.0/8` or `127.0.0.1` (one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// A malformed CIDR block.
#[derive(Debug, Error)]
#[error("invalid address block {0:?} (expected ADDR or ADDR/PREFIX)")]
pub struct CidrError(String);

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let err = || CidrError(s.to_owned());
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().map_err(|_| err())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.trim().parse::<u8>().map_err(|_| err())?,
            None => max,
        };
        if prefix > max {
            return Err(err());
        }
        Ok(Cidr { addr, prefix })
    }
}

impl Cidr {
    /// Whether `ip` lies in this block (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Parses a comma-separated list of blocks.
pub fn parse_trusted(s: &str) -> Result<Vec<Cidr>, CidrError> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(Cidr::from_str)
        .collect()
}

/// What a PROXY header at the start of a buffer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyHeader {
    /// More bytes are needed.
    NeedMore,
    /// A complete header of `len` bytes; `client` is the address it names (`None` for v2 LOCAL,
    /// v1 UNKNOWN and non-IP families: the socket's own peer stands).
    Complete {
        len: usize,
        client: Option<SocketAddr>,
    },
    /// Not a valid header.
    Invalid(String),
}

/// Longest v1 header (the PROXY protocol's own limit).
const V1_MAX: usize = 107;

/// Parses the PROXY header at the start of `buf`.
pub fn parse(buf: &[u8]) -> ProxyHeader {
    let parsed = HeaderResult::parse(buf);
    if parsed.is_incomplete() {
        if buf.starts_with(b"PROXY ") && buf.len() >= V1_MAX {
            return ProxyHeader::Invalid("PROXY v1 header without end of line".into());
        }
        return ProxyHeader::NeedMore;
    }
    match parsed {
        HeaderResult::V1(Ok(h)) => {
            let client = match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => {
                    Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                }
                ppp::v1::Addresses::Tcp6(a) => {
                    Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                }
                ppp::v1::Addresses::Unknown => None,
            };
            ProxyHeader::Complete {
                len: h.header.len(),
                client,
            }
        }
        HeaderResult::V2(Ok(h)) => {
            let client = match (h.command, h.addresses) {
                (ppp::v2::Command::Local, _) => None,
                (_, ppp::v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                }
                (_, ppp::v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                }
                _ => None,
            };
            ProxyHeader::Complete {
                len: h.len(),
                client,
            }
        }
        HeaderResult::V1(Err(e)) => ProxyHeader::Invalid(format!("PROXY v1: {e:?}")),
        HeaderResult::V2(Err(e)) => ProxyHeader::Invalid(format!("PROXY v2: {e:?}")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cidr_blocks_match_their_addresses() {
        let t = parse_trusted("127.0.0.1, 10.0.0.0/8 ,::1").unwrap();
        let has = |s: &str| t.iter().any(|c| c.contains(s.parse().unwrap()));
        assert!(has("127.0.0.1"));
        assert!(!has("127.0.0.2"));
        assert!(has("10.200.3.4"));
        assert!(!has("11.0.0.1"));
        assert!(has("::1"));
        assert!(has("::ffff:10.1.1.1"));
        assert!(parse_trusted("10.0.0.0/33").is_err());
        assert!(parse_trusted("nonsense").is_err());
        assert!("0.0.0.0/0"
            .parse::<Cidr>()
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn v1_header_names_the_client() {
        let h = b"PROXY TCP4 192.0.2.7 198.51.100.1 51000 443\r\n\xe7\x4e";
        assert_eq!(
            parse(h),
            ProxyHeader::Complete {
                len: h.len() - 2,
                client: Some("192.0.2.7:51000".parse().unwrap()),
            }
        );
        assert_eq!(parse(&h[..20]), ProxyHeader::NeedMore);
        assert!(matches!(
            parse(b"PROXY TCP4 nonsense here at all\r\n"),
            ProxyHeader::Invalid(_)
        ));
    }

    #[test]
    fn v2_header_names_the_client_and_local_keeps_the_peer() {
        let mut h = crate::transport::detect::PROXY_V2_SIG.to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0x00, 12]);
        h.extend_from_slice(&[203, 0, 113, 9, 127, 0, 0, 1]);
        h.extend_from_slice(&40000u16.to_be_bytes());
        h.extend_from_slice(&14000u16.to_be_bytes());
        assert_eq!(
            parse(&h),
            ProxyHeader::Complete {
                len: 28,
                client: Some("203.0.113.9:40000".parse().unwrap()),
            }
        );
        assert_eq!(parse(&h[..20]), ProxyHeader::NeedMore);
        let mut local = crate::transport::detect::PROXY_V2_SIG.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        assert_eq!(
            parse(&local),
            ProxyHeader::Complete {
                len: 16,
                client: None
            }
        );
    }
}
