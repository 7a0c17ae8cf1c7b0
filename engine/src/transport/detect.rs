//! Classifies a connection by its first bytes (SPEC §12, "Listeners and detection").

/// PROXY protocol v2 signature.
pub const PROXY_V2_SIG: [u8; 12] = [
    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
];
const PROXY_V1_SIG: &[u8] = b"PROXY ";

/// The TLS alert a plain listener answers a ClientHello with: fatal `protocol_version`.
pub const TLS_REFUSAL_ALERT: [u8; 7] = [0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x46];

/// What the first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// Not enough bytes to tell.
    NeedMore,
    /// A PROXY protocol header (v1 or v2).
    Proxy,
    /// Native tern frames.
    Native,
    /// A TLS record.
    Tls,
    /// An HTTP/1.1 request (WebSocket upgrade or tunnel).
    Http,
    /// None of the above.
    Other,
}

/// Classifies `b`, the bytes received so far on a connection.
pub fn detect(b: &[u8]) -> Detected {
    let Some(&first) = b.first() else {
        return Detected::NeedMore;
    };
    match first {
        0xe7 => Detected::Native,
        0x16 => match b.get(1) {
            None => Detected::NeedMore,
            Some(0x03) => Detected::Tls,
            Some(_) => Detected::Other,
        },
        0x0d => prefix_match(b, &PROXY_V2_SIG, Detected::Proxy, Detected::Other),
        // "PROXY " and "POST"/"PUT"/"PATCH" share their first letter.
        b'P' => prefix_match(b, PROXY_V1_SIG, Detected::Proxy, Detected::Http),
        b'A'..=b'Z' => Detected::Http,
        _ => Detected::Other,
    }
}

/// `matched` once `b` begins with `sig`, `NeedMore` while it is a proper prefix of it,
/// otherwise `otherwise`.
fn prefix_match(b: &[u8], sig: &[u8], matched: Detected, otherwise: Detected) -> Detected {
    let n = b.len().min(sig.len());
    if b[..n] != sig[..n] {
        otherwise
    } else if n == sig.len() {
        matched
    } else {
        Detected::NeedMore
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_pick_the_transport() {
        assert_eq!(detect(b""), Detected::NeedMore);
        assert_eq!(detect(&[0xe7, 0x4e, 0x01]), Detected::Native);
        assert_eq!(detect(&[0xe7]), Detected::Native);
        assert_eq!(detect(&[0x16]), Detected::NeedMore);
        assert_eq!(detect(&[0x16, 0x03, 0x01]), Detected::Tls);
        assert_eq!(detect(&[0x16, 0x09]), Detected::Other);
        assert_eq!(detect(b"GET / HTTP/1.1\r\n"), Detected::Http);
        assert_eq!(detect(b"POST /tern/open"), Detected::Http);
        assert_eq!(detect(b"PO"), Detected::Http);
        assert_eq!(detect(b"PRO"), Detected::NeedMore);
        assert_eq!(detect(b"PROXY TCP4 1.2.3.4"), Detected::Proxy);
        assert_eq!(detect(b"PROXZ"), Detected::Http);
        assert_eq!(detect(&PROXY_V2_SIG[..5]), Detected::NeedMore);
        assert_eq!(detect(&PROXY_V2_SIG), Detected::Proxy);
        assert_eq!(detect(&[0x0d, 0x0a, 0x0d, 0x0b]), Detected::Other);
        assert_eq!(detect(b"\x00\x01"), Detected::Other);
        assert_eq!(detect(b"get /"), Detected::Other);
    }
}
