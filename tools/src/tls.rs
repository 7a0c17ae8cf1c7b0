//! TLS for the client transports (rustls with the aws-lc-rs provider): which certificates to trust —
//! a CA/certificate PEM file, a pinned SHA-256 fingerprint of the server's certificate, or the
//! system's CA bundle — and the ALPN protocol each transport offers.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

/// ALPN of the native protocol inside TLS (SPEC §12).
pub const ALPN_TERN: &[u8] = b"tern/1";
/// ALPN of WebSocket and the HTTP tunnel inside TLS.
pub const ALPN_HTTP: &[u8] = b"http/1.1";

/// Where the system's CA bundle usually is (Debian/Ubuntu, then Fedora/RHEL, then Alpine/SUSE).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// Why TLS could not be set up or failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no certificate in PEM form")]
    NoCertificates { path: PathBuf },
    #[error("{path}: {message}")]
    BadCertificate { path: PathBuf, message: String },
    #[error("no CA to trust: give a CA file or a pinned fingerprint (no system CA bundle found)")]
    NoTrust,
    #[error("a pin is 64 hex digits (SHA-256 of the server's certificate), got {0:?}")]
    BadPin(String),
    #[error("invalid TLS server name {0:?}")]
    BadServerName(String),
    #[error("TLS handshake: {0}")]
    Handshake(String),
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A SHA-256 fingerprint of a DER certificate.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER certificate.
    pub fn of(der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(der).into())
    }

    /// The fingerprint of the first certificate of a PEM file (e.g. the dev certificate
    /// `DATA_DIR/tls/cert.pem`).
    pub fn of_pem_file(path: &Path) -> Result<Fingerprint, TlsError> {
        let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })?;
        let cert = CertificateDer::pem_slice_iter(&bytes)
            .next()
            .ok_or_else(|| TlsError::NoCertificates {
                path: path.to_owned(),
            })?
            .map_err(|e| TlsError::BadCertificate {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        Ok(Fingerprint::of(cert.as_ref()))
    }

    /// Parses 64 hex digits; colons, spaces and a `sha256:` / `SHA256=` prefix are accepted, so
    /// both `openssl x509 -fingerprint` output and plain hex work.
    pub fn parse(s: &str) -> Result<Fingerprint, TlsError> {
        let t = s.trim();
        let t = t
            .strip_prefix("sha256:")
            .or_else(|| t.strip_prefix("SHA256:"))
            .or_else(|| t.strip_prefix("sha256 Fingerprint="))
            .or_else(|| t.strip_prefix("SHA256 Fingerprint="))
            .unwrap_or(t);
        let digits: String = t.chars().filter(|c| *c != ':' && *c != ' ').collect();
        let mut out = [0u8; 32];
        hex::decode_to_slice(&digits, &mut out).map_err(|_| TlsError::BadPin(s.to_owned()))?;
        Ok(Fingerprint(out))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Which server certificates to accept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Trust {
    /// The system's CA bundle (`SSL_CERT_FILE`, else the usual paths).
    #[default]
    System,
    /// The certificates of a PEM file (a CA, or the server's own self-signed certificate).
    CaFile(PathBuf),
    /// Only the certificate with this SHA-256 fingerprint (chain and name not checked: the pin
    /// is the identity). The handshake signature is still verified with its key.
    Pin(Fingerprint),
}

/// A provider shared by every configuration the process builds.
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

fn load_roots(path: &Path, roots: &mut RootCertStore) -> Result<usize, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut added = 0;
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        let cert = cert.map_err(|e| TlsError::BadCertificate {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        roots.add(cert).map_err(|e| TlsError::BadCertificate {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        added += 1;
    }
    if added == 0 {
        return Err(TlsError::NoCertificates {
            path: path.to_owned(),
        });
    }
    Ok(added)
}

fn system_roots() -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    let from_env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    for path in from_env
        .into_iter()
        .chain(SYSTEM_BUNDLES.iter().map(PathBuf::from))
    {
        if path.is_file() {
            // System bundles sometimes hold certificates webpki rejects; keep the ones it takes.
            if let Ok(bytes) = std::fs::read(&path) {
                let certs = CertificateDer::pem_slice_iter(&bytes).filter_map(Result::ok);
                roots.add_parsable_certificates(certs);
            }
            if !roots.is_empty() {
                return Ok(roots);
            }
        }
    }
    Err(TlsError::NoTrust)
}

/// Accepts exactly one certificate, by fingerprint; see [`Trust::Pin`].
#[derive(Debug)]
struct PinVerifier {
    pin: Fingerprint,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Constant time is not needed: the fingerprint is public, only equality matters.
        if Fingerprint::of(end_entity.as_ref()) == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The two client configurations of one trust setting: native (`tern/1`) and HTTP
/// (`http/1.1`). Built once and shared: building reads and parses the CA file.
#[derive(Debug, Clone)]
pub struct TlsConfigs {
    pub native: Arc<rustls::ClientConfig>,
    pub http: Arc<rustls::ClientConfig>,
}

impl TlsConfigs {
    pub fn new(trust: &Trust) -> Result<TlsConfigs, TlsError> {
        let provider = provider();
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let base = match trust {
            Trust::Pin(pin) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinVerifier {
                    pin: *pin,
                    provider,
                }))
                .with_no_client_auth(),
            Trust::CaFile(path) => {
                let mut roots = RootCertStore::empty();
                load_roots(path, &mut roots)?;
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            Trust::System => builder
                .with_root_certificates(system_roots()?)
                .with_no_client_auth(),
        };
        let mut native = base.clone();
        native.alpn_protocols = vec![ALPN_TERN.to_vec()];
        let mut http = base;
        http.alpn_protocols = vec![ALPN_HTTP.to_vec()];
        Ok(TlsConfigs {
            native: Arc::new(native),
            http: Arc::new(http),
        })
    }
}

/// The name a TLS client sends and checks: an IP address or a DNS name.
pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(bare.to_owned()).map_err(|_| TlsError::BadServerName(name.to_owned()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn fingerprints_parse_in_common_spellings() {
        let hex64 = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let f = Fingerprint::parse(hex64).unwrap();
        assert_eq!(f.to_string(), hex64);
        let colons = hex64
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap().to_uppercase())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(Fingerprint::parse(&colons).unwrap(), f);
        assert_eq!(
            Fingerprint::parse(&format!("SHA256 Fingerprint={colons}")).unwrap(),
            f
        );
        assert_eq!(Fingerprint::parse(&format!("sha256:{hex64}")).unwrap(), f);
        assert!(Fingerprint::parse("abcd").is_err());
        assert!(Fingerprint::parse(&hex64.replace('0', "g")).is_err());
    }

    #[test]
    fn server_names_accept_ips_and_dns_names() {
        assert!(matches!(
            server_name("127.0.0.1").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[::1]").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("chat.example.com").unwrap(),
            ServerName::DnsName(_)
        ));
        assert!(server_name("bad name!").is_err());
    }

    #[test]
    fn ca_file_errors_are_clear() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        assert!(matches!(
            TlsConfigs::new(&Trust::CaFile(missing)),
            Err(TlsError::Read { .. })
        ));
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        assert!(matches!(
            TlsConfigs::new(&Trust::CaFile(empty)),
            Err(TlsError::NoCertificates { .. })
        ));
        let pin = Fingerprint([7; 32]);
        let c = TlsConfigs::new(&Trust::Pin(pin)).unwrap();
        assert_eq!(c.native.alpn_protocols, vec![ALPN_TERN.to_vec()]);
        assert_eq!(c.http.alpn_protocols, vec![ALPN_HTTP.to_vec()]);
    }
}
